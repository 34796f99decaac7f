"""What runs inside a lab namespace: dhcpd's config, its restart script, and OMAPI reads.

The restart script is the inventory's ``restart_command``: the worker runs it over SSH in the
namespace (sshd runs there), and the lab runs it to start dhcpd in the first place, so the
path a change takes is the path every start takes.
"""

from __future__ import annotations

import base64
import gc
import ipaddress
import secrets
import shlex
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OMAPI_PORT = 7911
NORMAL = 2
#: dhcpd's failover states (includes/failover.h), as OMAPI reports them.
STATE_NAMES: Mapping[int, str] = {
    1: "startup",
    2: "normal",
    3: "communications-interrupted",
    4: "partner-down",
    5: "potential-conflict",
    6: "recover",
    7: "paused",
    8: "shutdown",
    9: "recover-done",
    10: "resolution-interrupted",
    11: "conflict-done",
    254: "recover-wait",
}


@dataclass(frozen=True)
class PairSettings:
    """The failover peer block the lab writes (the worker's parameters, by dhcpd name).

    Defaults are short on purpose: a dropped link is noticed after ``max_response_delay``
    seconds, and a peer that comes up in ``recover`` waits a full ``mclt``.
    """

    port: int = 647
    peer_port: int = 647
    max_response_delay: int = 5
    max_unacked_updates: int = 10
    mclt: int = 30
    split: int = 128
    load_balance_max_seconds: int = 3


@dataclass(frozen=True)
class LabOmapiKey:
    """An HMAC-MD5 OMAPI key: its name, and the secret as dhcpd.conf writes it (base64)."""

    name: str
    secret: str

    @classmethod
    def generate(cls, name: str = "omapi_key") -> LabOmapiKey:
        return cls(name, base64.b64encode(secrets.token_bytes(32)).decode("ascii"))


def render_config(
    role: str,
    subnet: ipaddress.IPv4Network,
    address: ipaddress.IPv4Address,
    peer_address: ipaddress.IPv4Address,
    relationship: str,
    peer: PairSettings,
    omapi_key: LabOmapiKey | None,
) -> str:
    """One peer's dhcpd.conf: OMAPI, the peer block, and a pool that references the peer."""
    if role not in ("primary", "secondary"):
        raise ValueError(f"role must be primary or secondary, not {role!r}")
    if not relationship or any(c in relationship for c in '"\\\n'):
        raise ValueError(f"relationship name {relationship!r} cannot be written in dhcpd.conf")
    lines = [
        f"# dhcpd.conf of the lab's {role}, written by worker.lab: the worker edits this file.",
        "authoritative;",
        "ddns-update-style none;",
        "default-lease-time 600;",
        "max-lease-time 7200;",
        "",
        f"omapi-port {OMAPI_PORT};",
    ]
    if omapi_key is not None:
        lines += [
            f"key {omapi_key.name} {{",
            "  algorithm hmac-md5;",
            f'  secret "{omapi_key.secret}";',
            "}",
            f"omapi-key {omapi_key.name};",
        ]
    lines += [
        "",
        f'failover peer "{relationship}" {{',
        f"  {role};",
        f"  address {address};",
        f"  port {peer.port};",
        f"  peer address {peer_address};",
        f"  peer port {peer.peer_port};",
        f"  max-response-delay {peer.max_response_delay};",
        f"  max-unacked-updates {peer.max_unacked_updates};",
    ]
    if role == "primary":
        lines += [f"  mclt {peer.mclt};", f"  split {peer.split};"]
    lines += [
        f"  load balance max seconds {peer.load_balance_max_seconds};",
        "}",
        "",
        f"subnet {subnet.network_address} netmask {subnet.netmask} {{",
        "  pool {",
        f'    failover peer "{relationship}";',
        f"    range {subnet[100]} {subnet[199]};",
        "  }",
        "}",
        "",
    ]
    return "\n".join(lines)


def restart_script(
    dhcpd: str, config: Path, leases: Path, pid_file: Path, log: Path, interface: str = "eth0"
) -> str:
    """``sh`` text that restarts this namespace's dhcpd, as ``systemctl restart`` would.

    It ends the dhcpd named in the pid file (TERM, KILL after 5 s; a zombie counts as gone:
    nothing may reap it here), then starts a new one in its own session with ``setsid``, so
    it outlives the SSH session. It fails when the new dhcpd is gone 0.5 s later, or before it
    has written its pid file.
    """
    q = shlex.quote
    argv = " ".join(
        q(str(a))
        for a in [dhcpd, "-f", "-d", "-cf", config, "-lf", leases, "-pf", pid_file, interface]
    )
    return f"""#!/bin/sh
# Restart the lab's dhcpd in this namespace (written by worker.lab).
pidf={q(str(pid_file))}
log={q(str(log))}
alive() {{
    st=$(sed -n 's/^State:[[:space:]]*\\([A-Z]\\).*/\\1/p' "/proc/$1/status" 2>/dev/null)
    [ -n "$st" ] && [ "$st" != Z ]
}}
if [ -s "$pidf" ]; then
    old=$(cat "$pidf")
    if alive "$old" && [ "$(cat "/proc/$old/comm" 2>/dev/null)" = dhcpd ]; then
        kill -TERM "$old"
        i=0
        while alive "$old"; do
            i=$((i + 1))
            [ "$i" -eq 100 ] && kill -KILL "$old"
            if [ "$i" -ge 200 ]; then echo "dhcpd $old did not exit" >&2; exit 1; fi
            sleep 0.05
        done
    fi
    # dhcpd refuses to start while the pid in this file answers kill -0 (a zombie does).
    rm -f "$pidf"
fi
echo "--- worker.lab restart $(date '+%F %T')" >> "$log"
setsid nohup {argv} >> "$log" 2>&1 < /dev/null &
new=$!
died() {{
    echo "dhcpd exited at once; $log ends with:" >&2
    tail -n 15 "$log" >&2
    exit 1
}}
sleep 0.5
alive "$new" || died
# dhcpd writes its pid file once its config, leases and interfaces are set up: on a busy
# machine that can be later than 0.5 s, and until then nothing can find it.
i=0
until [ "$(cat "$pidf" 2>/dev/null)" = "$new" ]; do
    i=$((i + 1))
    if [ "$i" -ge 400 ]; then
        echo "dhcpd $new did not write $pidf in 20 s" >&2
        kill -KILL "$new"
        exit 1
    fi
    sleep 0.05
    alive "$new" || died
done
echo "dhcpd restarted: pid $new"
"""


# -- OMAPI --------------------------------------------------------------------------------------


def query_failover_state(
    host: str,
    relationship: str,
    *,
    port: int = OMAPI_PORT,
    key: LabOmapiKey | None = None,
    timeout: float = 2.0,
) -> dict[str, bytes]:
    """The raw ``failover-state`` object of ``relationship`` on the dhcpd at host:port.

    Values are as dhcpd sends them (big-endian integers as bytes; see :func:`as_int`).
    Raises ``OSError`` when nothing answers, ``pypureomapi.OmapiErrorNotFound`` when there is
    no such relationship -- or the server wants a key and got none -- and
    ``pypureomapi.OmapiError`` for a wrong key.
    """
    import pypureomapi  # type: ignore[import-untyped,unused-ignore]

    user = key.name.encode() if key else None
    secret = key.secret.encode() if key else None
    omapi = _open(pypureomapi, host, port, user, secret, timeout)
    try:
        message = pypureomapi.OmapiMessage.open(b"failover-state")
        message.update_object({b"name": relationship.encode()})
        response = omapi.query_server(message)
        if response.opcode != pypureomapi.OMAPI_OP_UPDATE:
            raise pypureomapi.OmapiErrorNotFound()
        return {k.decode(): bytes(v) for k, v in response.obj}
    finally:
        omapi.close()


def _open(
    pypureomapi: Any, host: str, port: int, user: bytes | None, secret: bytes | None, timeout: float
) -> Any:
    """``pypureomapi.Omapi(...)``, without leaking its socket when connect or handshake fail.

    The library leaves that half-made socket to the garbage collector, which would report it
    as a ResourceWarning at some later, unrelated allocation: collect it here, quietly.
    """
    try:
        return pypureomapi.Omapi(host, port, user, secret, timeout=timeout)
    except Exception as e:
        failure = e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        failure.__traceback__ = None  # frees the frames that hold the socket
        gc.collect()
    raise failure


def as_int(value: bytes) -> int:
    """An OMAPI integer (big-endian, unsigned)."""
    return int.from_bytes(value, "big")


def states(raw: Mapping[str, bytes]) -> tuple[int, int]:
    """(local-state, partner-state) of a raw failover-state object."""
    return as_int(raw["local-state"]), as_int(raw["partner-state"])


def state_name(state: int) -> str:
    return STATE_NAMES.get(state, f"unknown({state})")
