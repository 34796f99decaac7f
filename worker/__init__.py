"""dhcp-failover-worker: change or remove ISC DHCP failover relationships on both peers safely."""

__version__ = "0.1.0"
