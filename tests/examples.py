"""The request examples of docs/contract.md §2, verbatim: one copy for every test."""

from __future__ import annotations

from typing import Any

MODIFY_ID = "7b0e1d52-6a55-4f0e-9a4b-2f1f5f7b1c11"
REMOVE_ID = "c7d6c9f0-0d7e-4bb4-b0a6-3a8f0f2d9b3e"

MODIFY: dict[str, Any] = {
    "requestId": MODIFY_ID,
    "command": "ModifyDHCPFailoverRelationship",
    "params": {
        "Name": "dhcp-failover",
        "PrimaryServer": "dhcp1.example.net",
        "SecondaryServer": "dhcp2.example.net",
        "Mclt": 1800,
        "Port": 647,
        "LoadBalanceMaxSeconds": 3,
        "MaxResponseDelay": 60,
        "MaxUnackedUpdates": 10,
    },
    "dryRun": False,
    "comment": "CHG-1234 shorten MCLT",
}

REMOVE: dict[str, Any] = {
    "requestId": REMOVE_ID,
    "command": "RemoveDHCPFailoverRelationships",
    "params": {
        "Server": "dhcp1.example.net",
        "Name": "dhcp-failover",
        "DeconfigureAction": "Disable",
    },
}
