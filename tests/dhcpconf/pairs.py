"""A well-formed primary/secondary pair that dhcpd accepts, for edits and pair checks."""

from __future__ import annotations

from worker.dhcpconf import ConfigSet

MAIN = "/etc/dhcp/dhcpd.conf"

PRIMARY = """\
failover peer "fo" {
  primary;
  address 10.0.0.1;
  port 647;
  peer address 10.0.0.2;
  peer port 847;
  max-response-delay 60;
  max-unacked-updates 10;
  mclt 1800;
  split 128;
  load balance max seconds 3;
}
subnet 10.0.0.0 netmask 255.255.255.0 {
  pool {
    failover peer "fo";
    range 10.0.0.10 10.0.0.99;
  }
}
"""

SECONDARY = """\
failover peer "fo" {
  secondary;
  address 10.0.0.2;
  port 847;
  peer address 10.0.0.1;
  peer port 647;
  max-response-delay 60;
  max-unacked-updates 10;
  load balance max seconds 3;
}
subnet 10.0.0.0 netmask 255.255.255.0 {
  pool {
    failover peer "fo";
    range 10.0.0.10 10.0.0.99;
  }
}
"""


def one(text: str, path: str = MAIN) -> ConfigSet:
    """A set of one file."""
    return ConfigSet.parse({path: text}, path)
