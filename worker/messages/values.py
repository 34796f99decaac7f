"""The value types and names both directions of the contract share (docs/contract.md §2-§3).

Everything a request carries ends up in a file path, a dhcpd.conf string or a log line, so
names are restricted to a safe character set and numbers to sane ranges here, at the edge,
before any other layer sees them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, StrictInt, StringConstraints

#: A failover relationship name: goes inside a quoted dhcpd.conf string and into log lines.
RelationshipName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
#: An inventory server name (a host name, usually an FQDN).
ServerName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")]
#: The idempotency key; also names the journal file on each server.
RequestId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")]
Port = Annotated[StrictInt, Field(ge=1, le=65535)]
#: dhcpd stores these as 32-bit seconds; a day of MCLT is already far beyond ISC's advice.
Mclt = Annotated[StrictInt, Field(ge=0, le=86400 * 7)]
LoadBalanceMaxSeconds = Annotated[StrictInt, Field(ge=0, le=3600)]
MaxResponseDelay = Annotated[StrictInt, Field(ge=1, le=3600)]
MaxUnackedUpdates = Annotated[StrictInt, Field(ge=1, le=65535)]

MAX_NAMES_PER_REMOVE = 32
MAX_COMMENT_LENGTH = 1024
#: Larger bodies are rejected before parsing (the consumer enforces it).
MAX_REQUEST_BYTES = 64 * 1024


class Operation(StrEnum):
    modify = "modify"
    remove = "remove"


class Outcome(StrEnum):
    succeeded = "succeeded"
    rejected = "rejected"
    failed = "failed"
    rolled_back = "rolled_back"
    rollback_failed = "rollback_failed"


class Phase(StrEnum):
    validate = "validate"
    plan = "plan"
    prepare = "prepare"
    commit = "commit"
    verify = "verify"
    rollback = "rollback"


class DeconfigureAction(StrEnum):
    """Micetro's enum for what happens to the secondary's scopes on remove."""

    none = "None"
    disable = "Disable"
    delete = "Delete"


MODIFY_COMMAND = "ModifyDHCPFailoverRelationship"
REMOVE_COMMAND = "RemoveDHCPFailoverRelationships"
COMMAND_OPERATION: dict[str, Operation] = {
    MODIFY_COMMAND: Operation.modify,
    REMOVE_COMMAND: Operation.remove,
}
