"""What a running dhcpd says about a failover relationship (OMAPI ``failover-state``).

The domain's view of the verify phase (issue 10): the transport reads these values over an
SSH port forward (:mod:`worker.transport.omapi`), the coordinator compares them with the
request. dhcpd exports only its *local* values, so a pair is judged on both servers' readings.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum


class PeerState(IntEnum):
    """dhcpd's failover states (``includes/failover.h``, ``enum failover_state``)."""

    unknown = 0
    startup = 1
    normal = 2
    communications_interrupted = 3
    partner_down = 4
    potential_conflict = 5
    recover = 6
    paused = 7
    shutdown = 8
    recover_done = 9
    resolution_interrupted = 10
    conflict_done = 11
    recover_wait = 254

    @classmethod
    def of(cls, value: int) -> PeerState:
        """A state number as dhcpd sent it; one this enum does not know is ``unknown``."""
        try:
            return cls(value)
        except ValueError:
            return cls.unknown

    @property
    def label(self) -> str:
        """The name dhcpd's own logs use (``communications-interrupted``)."""
        return self.name.replace("_", "-")


#: States a verify waits out (they end by themselves, up to ``verify_timeout``).
TRANSIENT_STATES = frozenset(
    {
        PeerState.startup,
        PeerState.communications_interrupted,
        PeerState.partner_down,
        PeerState.recover,
        PeerState.recover_wait,
        PeerState.recover_done,
        PeerState.unknown,
    }
)

#: States that fail a verify at once: an operator must act, waiting cannot help.
FATAL_STATES = frozenset(
    {
        PeerState.potential_conflict,
        PeerState.resolution_interrupted,
        PeerState.conflict_done,
        PeerState.paused,
        PeerState.shutdown,
    }
)


@dataclass(frozen=True)
class RunningState:
    """One server's OMAPI reading of one relationship. ``None`` fields were not sent.

    ``local_stos`` / ``partner_stos`` are when each side entered its current state (Unix
    seconds, dhcpd's clock). A restarted dhcpd (4.4.3-P1) restores its saved state *with its
    old time* from the lease file, so its own ``local_stos`` does not show the restart; its
    partner saw the link drop and entered a new state, which the restarted one reports as
    ``partner_stos`` once they talk (:mod:`worker.change.readings` judges freshness on both).
    ``mclt`` on a secondary is the primary's (adopted from the CONNECT message).
    ``hierarchy`` is 0 on the primary and 1 on the secondary.
    """

    relationship: str
    local_state: PeerState
    partner_state: PeerState
    read_at: datetime
    mclt: int | None = None
    local_port: int | None = None
    partner_port: int | None = None
    max_outstanding_updates: int | None = None
    max_response_delay: int | None = None
    load_balance_max_secs: int | None = None
    local_stos: int | None = None
    partner_stos: int | None = None
    hierarchy: int | None = None
    skew: int | None = None


@dataclass(frozen=True)
class VerifyPolicy:
    """A server's ``omapi`` inventory table, as the verify phase needs it."""

    allowed_states: frozenset[PeerState] = frozenset({PeerState.normal})
    timeout: float = 60.0
