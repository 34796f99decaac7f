"""What the running dhcpd must show, and what one OMAPI reading shows: the verify phase's
pure part (:mod:`~worker.change.verify` reads, waits and decides).

:func:`expectations` turns a config into the values a relationship runs with; :func:`judge`
says whether one reading satisfies a :class:`Probe` now, may later, or never will;
:func:`cross` holds a pair's two readings against each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from worker.change.model import ServerChange
from worker.change.running import FATAL_STATES, PeerState, RunningState, VerifyPolicy
from worker.dhcpconf import ConfigSet, Role
from worker.dhcpconf.checks import DEFAULT_PORT
from worker.dhcpconf.lexer import is_number
from worker.errors import OmapiAuthFailed, OmapiUnreachable, VerifyFailed, WorkerError
from worker.messages import Phase, RunningInfo

CLOCK_SLACK = 1  # seconds a fresh local-stos may lie before the restart (whole-second clocks)

#: RunningState field -> (dhcpd's OMAPI name, the peer-block statement that sets it).
_VALUES = {
    "local_port": ("local-port", "port"),
    "partner_port": ("partner-port", "peer port"),
    "mclt": ("mclt", "mclt"),
    "max_response_delay": ("max-response-delay", "max-response-delay"),
    "max_outstanding_updates": ("max-outstanding-updates", "max-unacked-updates"),
    "load_balance_max_secs": ("load-balance-max-secs", "load balance max seconds"),
}


@dataclass(frozen=True)
class Expected:
    """What one server's dhcpd must run for one relationship; ``role`` None: nothing."""

    relationship: str
    role: Role | None
    values: dict[str, int] = field(default_factory=dict)


def expectations(cs: ConfigSet, names: Sequence[str]) -> list[Expected]:
    """Pure (and CPU work: run it in a thread): the values each of ``names`` runs with."""
    found = []
    for name in names:
        decl = cs.declarations.get(name)
        if decl is None:
            found.append(Expected(name, None))
            continue
        values: dict[str, int] = {"local_port": DEFAULT_PORT, "partner_port": DEFAULT_PORT}
        for attr, (_, statement) in _VALUES.items():
            param = decl.get(statement)
            if param is not None and is_number(param.value):
                values[attr] = int(param.value)
        if decl.role == "secondary":
            values.pop("mclt", None)  # it runs the primary's
        values["hierarchy"] = 0 if decl.role == "primary" else 1  # dhcpd's i_am
        found.append(Expected(name, decl.role, values))
    return found


@dataclass
class Probe:
    """One relationship on one server, as one wait judges it."""

    change: ServerChange
    policy: VerifyPolicy
    expected: Expected
    since: float | None = None  # wall clock: a reading with both states from before it is old
    values: bool = False  # compare with the file (servers restarted on it)
    pair: bool = False  # require allowed states on both sides
    fatal: bool = True  # a fatal state ends the wait

    @property
    def key(self) -> tuple[str, str]:
        return self.change.name, self.expected.relationship


Reading = RunningState | None | Exception
Verdict = tuple[Literal["ok", "wait", "fail"], str | None, str]


def judge(p: Probe, got: Reading) -> Verdict:
    """One reading against what the probe needs (the policy in the module docstring).

    A reading older than ``p.since`` (:func:`_older`) may come from the dhcpd that was
    replaced, so it never fails a probe. Alone, a restarted dhcpd that cannot reach its
    partner yet (the partner still runs the old ports) looks just as old: it restores the
    state it saved, with that state's time. So, after a restart and before the pair, a
    reading that already runs the new file's values counts as the new dhcpd's."""
    e = p.expected
    if isinstance(got, OmapiAuthFailed):
        return "fail", f"OMAPI refused the key: {got.message}", got.code
    if isinstance(got, WorkerError):
        return "wait", f"no OMAPI answer: {got.message}", "omapi_unreachable"
    if isinstance(got, Exception):
        return "fail", f"reading failed: {type(got).__name__}: {got}", "internal_error"
    if got is None:
        if e.role is None:
            return "ok", None, ""
        return "wait", f"runs no failover-state {e.relationship!r}", "running_values_differ"
    old = p.since is not None and _older(got, int(p.since) - CLOCK_SLACK)
    if e.role is None:
        left = f"still runs failover-state {e.relationship!r}"
        return ("wait" if old else "fail"), left, "running_values_differ"
    differ = _differences(e, got) if p.values else []
    if differ:
        return ("wait" if old else "fail"), "runs " + ", ".join(differ), "running_values_differ"
    if old and (p.pair or not p.values):
        assert p.since is not None
        return (
            "wait",
            f"nothing changed since the restart at {int(p.since)}: local-stos "
            f"{got.local_stos}, partner-stos {got.partner_stos} (a dhcpd that has not reached "
            "its partner keeps the state it saved; or its clock is behind the worker's)",
            "pair_not_normal",
        )
    allowed = p.policy.allowed_states
    sides = (got.local_state, got.partner_state) if p.pair else (got.local_state,)
    if p.fatal and any(s in FATAL_STATES and s not in allowed for s in sides):
        return "fail", _states(got), "pair_not_normal"
    if p.pair and not {got.local_state, got.partner_state} <= allowed:
        return "wait", _states(got), "pair_not_normal"
    return "ok", None, ""


def _differences(e: Expected, got: RunningState) -> list[str]:
    """What ``got`` runs that its file does not say (a value dhcpd did not report: nothing)."""
    return [
        f"{_VALUES[k][0] if k in _VALUES else k} {getattr(got, k)} (its file: {v})"
        for k, v in e.values.items()
        if getattr(got, k) not in (v, None)
    ]


def verify_error(
    probes: list[Probe],
    verdicts: list[Verdict],
    seen: list[dict[str, Any] | None],
    bad: list[int],
    code: str,
    when: str,
) -> WorkerError:
    """The verify error: what each server said in the last round (``seen``, as the event
    shows a reading), and why it fails. ``server`` names the first failing server that gave
    no reading (a dead dhcpd, not the partner left waiting for it), else the first failing."""
    silent = [i for i in bad if seen[i] is None]
    first = probes[(silent or bad)[0]]
    problems = "; ".join(f"{probes[i].change.name}: {verdicts[i][1]}" for i in bad)
    kind = {
        "pair_not_normal": "the pair did not re-form",
        "running_values_differ": "dhcpd does not run what its file says",
        "omapi_unreachable": "dhcpd did not answer OMAPI",
        "omapi_auth_failed": "OMAPI refused the key",
    }.get(code, "verify failed")
    cls = {"omapi_unreachable": OmapiUnreachable, "omapi_auth_failed": OmapiAuthFailed}
    return cls.get(code, VerifyFailed)(
        f"{kind} {when}: {problems}",
        code=code,
        server=first.change.name,
        phase=Phase.verify,
        detail={
            "servers": [
                {
                    "server": p.change.name,
                    "relationship": p.expected.relationship,
                    "running": info,
                    "problem": v[1],
                }
                for p, v, info in zip(probes, verdicts, seen, strict=True)
            ]
        },
    )


def cross(probes: list[Probe], readings: list[Reading]) -> dict[int, str]:
    """The cross-checks of each pair read on both sides in ``normal``: problems by probe."""
    problems: dict[int, str] = {}
    both = [(i, p, r) for i, (p, r) in enumerate(zip(probes, readings, strict=True)) if p.pair]
    for i, p, primary in both:
        if p.expected.role != "primary" or not _normal(primary):
            continue
        for j, q, secondary in both:
            same = q.expected.relationship == p.expected.relationship
            if same and q.expected.role == "secondary" and _normal(secondary):
                assert isinstance(primary, RunningState) and isinstance(secondary, RunningState)
                differ = [
                    f"{what} {a} but the secondary's {other} {b}"
                    for what, a, other, b in (
                        ("partner-port", primary.partner_port, "local-port", secondary.local_port),
                        ("local-port", primary.local_port, "partner-port", secondary.partner_port),
                        ("mclt", primary.mclt, "mclt", secondary.mclt),
                    )
                    if a != b
                ]
                if differ:
                    problems[i] = "its " + ", ".join(differ)
                    problems[j] = f"its values do not match the primary's ({p.change.name})"
    return problems


def _older(got: RunningState, bound: int) -> bool:
    """A reading from before ``bound``: neither side's state changed since. Not the local
    side alone: a restarted dhcpd that gets back to the state it saved in its lease file
    restores that state's time too (seen on 4.4.3-P1); its partner, which lost the link,
    enters a new state, and the restarted one reports that as ``partner-stos`` once they
    talk again."""
    times = [t for t in (got.local_stos, got.partner_stos) if t is not None]
    return bool(times) and max(times) < bound


def _normal(got: Reading) -> bool:
    return (
        isinstance(got, RunningState)
        and got.local_state is PeerState.normal
        and got.partner_state is PeerState.normal
    )


def _states(got: RunningState) -> str:
    return f"state {got.local_state.label}, partner {got.partner_state.label}"


def running_info(name: str, at: datetime, got: RunningState | None) -> RunningInfo:
    if got is None:
        return RunningInfo(relationship=name, state=None, partnerState=None, readAt=at)
    return RunningInfo.model_validate(
        {
            "relationship": name,
            "state": got.local_state.label,
            "partnerState": got.partner_state.label,
            "mclt": got.mclt,
            "localPort": got.local_port,
            "partnerPort": got.partner_port,
            "maxResponseDelay": got.max_response_delay,
            "maxUnackedUpdates": got.max_outstanding_updates,
            "loadBalanceMaxSeconds": got.load_balance_max_secs,
            "readAt": got.read_at,
        }
    )
