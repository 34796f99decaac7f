"""``python -m worker``: the same command line as ``dhcp-failover-worker``."""

from worker.cli import main

main(prog_name="dhcp-failover-worker")
