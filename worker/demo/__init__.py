"""Stand-ins for real DHCP servers: local OpenSSH daemons and sample dhcpd.conf files.

Used by the real-sshd test fixtures and by the README demo, so both exercise the same setup.
"""

from __future__ import annotations

from importlib import resources

PRIMARY = "dhcp1.example.net"
SECONDARY = "dhcp2.example.net"
RELATIONSHIP = "dhcp-failover"

#: The failover addresses the sample configs use for each server (`address` / `peer address`).
SAMPLE_ADDRESSES: dict[str, tuple[str, ...]] = {
    PRIMARY: ("192.0.2.10",),
    SECONDARY: ("192.0.2.11",),
}


def sample_config(role: str) -> str:
    """The sample dhcpd.conf for ``role`` ("primary" or "secondary"); both pass ``dhcpd -t``."""
    if role not in ("primary", "secondary"):
        raise ValueError(f"role must be 'primary' or 'secondary', not {role!r}")
    return resources.files(__package__).joinpath("samples", f"{role}.conf").read_text("utf-8")


def sample_configs() -> dict[str, str]:
    """Server name -> config text for the sample pair (primary first)."""
    return {PRIMARY: sample_config("primary"), SECONDARY: sample_config("secondary")}
