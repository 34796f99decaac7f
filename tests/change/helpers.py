"""Requests and expected texts shared by the fake and the real-sshd coordinator tests."""

from __future__ import annotations

import hashlib
import posixpath
from typing import Any

from worker.demo import PRIMARY, RELATIONSHIP, SECONDARY, sample_config
from worker.messages import ModifyRequest, RemoveRequest, ResultData

PRIMARY_CONF = sample_config("primary")
SECONDARY_CONF = sample_config("secondary")

#: The modify every "succeeded" test applies, and what it must do to each file.
MODIFY_SETTINGS: dict[str, Any] = {"Mclt": 1800, "Port": 648}
PRIMARY_AFTER = PRIMARY_CONF.replace("port 647;", "port 648;").replace("mclt 3600;", "mclt 1800;")
SECONDARY_AFTER = SECONDARY_CONF.replace("port 647;", "port 648;")

#: The scopes whose pools reference the sample relationship.
SCOPES = ("subnet 10.20.0.0 netmask 255.255.255.0", "subnet 10.30.0.0 netmask 255.255.254.0")


class SimulatedCrash(BaseException):
    """The worker process dying mid-step: no ``except Exception`` may catch it."""


def sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def modify_request(
    request_id: str = "req-modify-1", *, dry_run: bool = False, **settings: Any
) -> ModifyRequest:
    return ModifyRequest.model_validate(
        {
            "requestId": request_id,
            "command": "ModifyDHCPFailoverRelationship",
            "params": {
                "Name": RELATIONSHIP,
                "PrimaryServer": PRIMARY,
                "SecondaryServer": SECONDARY,
                **(settings or MODIFY_SETTINGS),
            },
            "dryRun": dry_run,
        }
    )


def remove_request(
    request_id: str = "req-remove-1",
    *,
    action: str = "Disable",
    server: str = PRIMARY,
    name: str | list[str] = RELATIONSHIP,
) -> RemoveRequest:
    return RemoveRequest.model_validate(
        {
            "requestId": request_id,
            "command": "RemoveDHCPFailoverRelationships",
            "params": {"Server": server, "Name": name, "DeconfigureAction": action},
        }
    )


def without_durations(result: ResultData) -> dict[str, Any]:
    """A result as a dict with every duration zeroed: what "the same outcome" compares."""
    data = result.model_dump(mode="json")
    data["durationMs"] = 0
    for server in data["servers"]:
        server["durationMs"] = 0
    return data


def is_temp(name: str) -> bool:
    """A file a change leaves only while it runs (candidates, copies, restores, tmp)."""
    base = posixpath.basename(name)
    return base.endswith((".new", ".check", ".restore", ".tmp"))


def backups(names: list[str]) -> list[str]:
    return [n for n in names if n.endswith(".bak")]


def journals(names: list[str]) -> list[str]:
    """Journals of changes still running (or cut off)."""
    return [n for n in names if posixpath.basename(n).startswith(".dhcp-failover-journal.")]


def done_records(names: list[str]) -> list[str]:
    """Outcomes of changes that ended."""
    return [n for n in names if posixpath.basename(n).startswith(".dhcp-failover-done.")]
