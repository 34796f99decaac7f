"""SSH transport: the inventory and the pooled asyncssh adapter implementing ``RemoteHost``."""

from worker.transport.inventory import (
    Inventory,
    InventoryError,
    ServerEntry,
    load_inventory,
    parse_inventory,
)
from worker.transport.ssh import SshFleet, SshHost, SshOptions

__all__ = [
    "Inventory",
    "InventoryError",
    "ServerEntry",
    "SshFleet",
    "SshHost",
    "SshOptions",
    "load_inventory",
    "parse_inventory",
]
