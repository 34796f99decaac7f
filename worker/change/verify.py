"""The verify phase: prove over OMAPI that the running pair re-formed with what the files say.

``dhcpd -t`` passing and the restart command exiting 0 do not mean the relationship works:
ports that no longer meet, a peer stuck in ``communications-interrupted``, a dhcpd that runs
another file. So after the commit, each server with an ``omapi`` inventory table is read
(:meth:`RemoteHost.failover_state`) until it proves the change, or its ``verify_timeout``
ends. What a reading must show is decided in :mod:`~worker.change.readings`. Policy:

* **Prepare** (:meth:`Verification.prepare`, nothing live yet, dry runs too): each such
  server's dhcpd is read once. An auth failure, no answer, or no such relationship running
  fails the request (``failed``): a change never goes live on a server the worker cannot
  verify. The reading is the baseline.
* **After each server's restart** (:meth:`Verification.commit`): its dhcpd answers and runs
  the values its new file sets. A reading is *fresh* when ``local-stos`` or ``partner-stos``
  is not before the restart (whole seconds, one second of slack for dhcpd's clock and ours).
  A restarted dhcpd restores the state it saved with that state's old time (seen on
  4.4.3-P1), so until it reaches its partner it looks like the one it replaced: then the new
  values alone prove the new dhcpd, and other values are waited for, not failed at once.
* **After the last restart**: every peer reports its state and its partner's in
  ``allowed_states`` (default ``normal``); when both are normal and both are read, the
  primary's ``partner-port`` is the secondary's ``local-port`` and the reverse, and the
  secondary's ``mclt`` is the primary's. Every reading must be fresh against the pair's last
  restart (the side that lost the link entered a new state; the other side reports that as
  ``partner-stos``). A server not restarted is read too, but its values are not compared.
* **Remove**: no ``failover-state`` of a removed name is left on a server once restarted.

What is compared is what the candidate file says, not only what the request set: the
statements the peer block holds after the change (``port`` and ``peer port`` default 647),
``mclt`` on the primary only (a secondary adopts the primary's when they connect), and the
role (``hierarchy``). A value the file leaves to dhcpd's defaults, or one dhcpd does not
report, is not compared.

Readings are taken at once, then every ``POLL_INTERVAL``. States that only need time
(``TRANSIENT_STATES``), old readings and no answer are waited for; a ``FATAL_STATES`` state,
a fresh reading with other values, or a refused key end the wait at once. The error codes:
``pair_not_normal`` (a state), ``running_values_differ`` (values, a relationship missing or
left), ``omapi_unreachable`` (no answer by the deadline), ``omapi_auth_failed``; phase
``verify``; ``detail.servers`` holds what each server said.

On failure the coordinator rolls back and :meth:`Verification.rollback` verifies the *old*
pair the same way (freshness from the rollback's start). If the baseline showed the old pair
not formed, states are not checked then, only that each dhcpd answers and a restarted one runs
the old values: a rollback cannot be asked to mend what was broken before. Servers without
``omapi`` are not read, and the event says so (``verifySkipped``).

Crash recovery needs no journal step of its own: a commit writes none, so a change cut off
during its verify looks like one cut off after its last rename. Its redelivery rolls it
forward (:mod:`~worker.change.recovery`): it restarts every server holding a new file again
and runs the whole verify again; one cut off while verifying the rollback had written
``rolled_back`` steps, so its redelivery verifies the old pair (without a freshness bound:
this run restarted nothing) and publishes the recorded cause.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from worker.change.commit import (
    commit,
    restart_confirmed,
    restart_timed_out,
    restart_unconfirmed,
    rollback,
    rollback_failed_error,
)
from worker.change.faults import step
from worker.change.model import ServerChange, changed_only
from worker.change.readings import (
    Expected,
    Probe,
    Reading,
    Verdict,
    cross,
    expectations,
    judge,
    running_info,
    verify_error,
)
from worker.change.running import RunningState
from worker.change.snapshot import read_snapshot
from worker.dhcpconf import ConfigSet
from worker.errors import OmapiUnreachable, VerifyFailed, WorkerError
from worker.messages import (
    ModifyRequest,
    Phase,
    RemoveRequest,
    ResultData,
    RunningInfo,
    WarningInfo,
)
from worker.metrics import spend

NO_OMAPI = "no omapi in inventory"
POLL_INTERVAL = 0.05  # seconds between readings; the first is taken at once

Version = Literal["old", "new"]


@dataclass
class Verification:
    """The verify phase of one change: baseline, expectations, readings, and the report."""

    request: ModifyRequest | RemoveRequest
    changes: list[ServerChange]
    spent: float = 0.0
    ran: bool = False  # a verify ran after a restart
    verified: bool = False
    notes: list[WarningInfo] = field(default_factory=list)  # added to the result's warnings
    _expected: dict[tuple[str, Version], list[Expected]] = field(default_factory=dict)
    _last: dict[tuple[str, str], tuple[datetime, RunningState | None]] = field(default_factory=dict)
    _baseline: dict[tuple[str, str], RunningState | None] = field(default_factory=dict)

    def _names(self) -> tuple[str, ...]:
        if isinstance(self.request, ModifyRequest):
            return (self.request.params.name,)
        return self.request.params.names

    def _read(self) -> list[ServerChange]:
        """The servers that are read: those with ``omapi``."""
        return [c for c in self.changes if c.host.omapi is not None]

    @property
    def active(self) -> bool:
        """Some server of the change is read (else nothing here costs anything)."""
        return bool(self._read())

    async def _expect(self, change: ServerChange, version: Version) -> list[Expected]:
        """What ``change``'s server must run with the ``version`` files: from the plan's texts,
        or (a resumed change) from the live tree, which holds that version by now."""
        key = (change.name, version)
        if key not in self._expected:
            snapshot = change.snapshot
            if snapshot is None:
                snapshot = await read_snapshot(change.host)
                texts = snapshot.texts()
            else:
                texts = change.after_texts if version == "new" else snapshot.texts()
            main, base = snapshot.main, snapshot.base
            self._expected[key] = await asyncio.to_thread(
                lambda: expectations(ConfigSet.parse(texts, main, base), self._names())
            )
        return self._expected[key]

    # -- prepare -------------------------------------------------------------------------

    async def prepare(self, change: ServerChange) -> None:
        """Read ``change``'s server once before anything goes live; ``OmapiAuthFailed`` or
        ``OmapiUnreachable`` propagate (the request fails, nothing touched), and so does a
        dhcpd that runs none of a relationship its file declares: it runs another file, or
        the key is not dhcpd's, and no verify of it could pass."""
        if not self.active:
            return
        if not self.request.dry_run:
            await self._expect(change, "new")
        old = await self._expect(change, "old")
        if change.host.omapi is None:
            return
        for expected in old:
            if expected.role is not None:
                name = expected.relationship
                state = await change.host.failover_state(name)
                self._last[(change.name, name)] = (_now(), state)
                self._baseline[(change.name, name)] = state
                if state is None:
                    raise VerifyFailed(
                        f"{change.name} runs no failover-state {name!r} though its config "
                        "declares it (dhcpd runs another config, was not restarted since, "
                        "or the OMAPI key is not dhcpd's); nothing was changed",
                        code="running_values_differ",
                        server=change.name,
                        phase=Phase.prepare,
                        detail={"relationship": name},
                    )

    def _formed_before(self, relationship: str) -> bool:
        """The baseline saw the pair formed (or there is none: a resumed change)."""
        for change in self._read():
            key = (change.name, relationship)
            if key in self._baseline:
                got, policy = self._baseline[key], change.host.omapi
                assert policy is not None
                if got is None or not {got.local_state, got.partner_state} <= policy.allowed_states:
                    return False
        return True

    # -- commit ----------------------------------------------------------------------------

    async def commit(self) -> WorkerError | None:
        """Commit server by server, each verified after its restart, then the pair; the
        first failure is returned (the caller rolls back)."""
        restarts: dict[str, float] = {}
        for change in changed_only(self.changes):
            already = change.running_new
            started = time.time()
            cause = await commit([change])
            self._forget(change.name)
            if cause is not None and not (
                change.host.omapi is not None and restart_timed_out(change, cause)
            ):
                return cause  # else its dhcpd decides (worker/change/commit.py)
            if already:
                continue
            restarts[change.name] = started
            if change.host.omapi is None:
                continue
            probes = [
                Probe(change, change.host.omapi, e, since=started, values=True)
                for e in await self._expect(change, "new")
            ]
            if failure := await self._wait(probes, f"after the restart of {change.name}"):
                return failure if cause is None else restart_unconfirmed(cause, failure)
            if cause is not None:
                self.notes.append(restart_confirmed(change, cause))
        failure = await self._pair("new", restarts, lenient=set())
        await step("verified")  # test-only (worker/change/faults.py)
        return failure

    async def rollback(self, request_id: str, cause: WorkerError) -> WorkerError | None:
        """Roll back (:func:`~worker.change.commit.rollback`), then verify the old pair; the
        ``rollback_failed`` error when either fails, else None."""
        changes = self.changes
        started = time.time()
        restarting = [c.name for c in changed_only(changes) if c.restart_attempted]
        rolled_back = await rollback(changes, request_id, cause)
        for name in restarting:
            self._forget(name)
        if not rolled_back:
            return rollback_failed_error(changes, cause)
        lenient = {n for n in self._names() if not self._formed_before(n)}
        failure = await self._pair("old", dict.fromkeys(restarting, started), lenient)
        if failure is None:
            return None
        seen = {s["server"]: s["problem"] for s in failure.detail["servers"] if s["problem"]}
        for change in changes:
            if change.name in seen:
                change.needs_operator = True
                change.problems.append(f"the old pair did not re-form: {seen[change.name]}")
        return WorkerError(
            f"rolled back after: {cause.message}; but the old pair did not re-form: "
            f"{failure.message}",
            code="rollback_failed",
            server=failure.server,
            phase=Phase.rollback,
            detail={
                "cause": cause.to_info().model_dump(mode="json"),
                "servers": [c.summary() for c in changed_only(changes)],
                "verify": failure.to_info().model_dump(mode="json"),
            },
        )

    def _forget(self, server: str) -> None:
        """Drop ``server``'s readings once it may have restarted: ``running`` must never show
        a reading of the process that was replaced (null until a new one answers)."""
        for key in [k for k in self._last if k[0] == server]:
            del self._last[key]

    async def _pair(
        self, version: Version, restarts: dict[str, float], lenient: set[str]
    ) -> WorkerError | None:
        """Every read server of the change, once all restarts (in ``restarts``) are done."""
        if not self.active or not any(
            c.restarted or c.restart_attempted for c in changed_only(self.changes)
        ):
            return None  # nothing restarted: the running pair was not touched
        probes: list[Probe] = []
        holders: dict[str, list[str]] = {}
        for change in self.changes:
            for e in await self._expect(change, version):
                if e.role is not None:
                    holders.setdefault(e.relationship, []).append(change.name)
                if change.host.omapi is not None:
                    probes.append(Probe(change, change.host.omapi, e, values=change.restarted))
        for p in probes:
            rel = p.expected.relationship
            bounds = [restarts[n] for n in holders.get(rel, []) if n in restarts]
            if p.expected.role is None:
                p.since = restarts.get(p.change.name)
            else:
                p.pair = p.fatal = rel not in lenient
                # Lenient, a server not restarted has nothing to show but an answer.
                p.since = max(bounds) if bounds and (p.pair or p.values) else None
        failure = await self._wait(probes, "after the last restart")
        self.verified = failure is None and len(self._read()) == len(self.changes)
        return failure

    # -- waiting -----------------------------------------------------------------------------

    async def _wait(self, probes: list[Probe], when: str) -> WorkerError | None:
        """Read until every probe is satisfied, one fails, or a deadline passes."""
        if not probes:
            return None
        self.ran = True
        start = time.monotonic()
        deadlines = [start + p.policy.timeout for p in probes]
        try:
            while True:
                readings = await self._round(probes, deadlines)
                verdicts = [judge(p, r) for p, r in zip(probes, readings, strict=True)]
                if all(v[0] == "ok" for v in verdicts):
                    for i, problem in cross(probes, readings).items():
                        verdicts[i] = ("fail", problem, "running_values_differ")
                failed = [i for i, v in enumerate(verdicts) if v[0] == "fail"]
                if failed:
                    code = verdicts[failed[0]][2]
                    return self._error(probes, readings, verdicts, failed, code, when)
                waiting = [i for i, v in enumerate(verdicts) if v[0] == "wait"]
                if not waiting:
                    return None
                now = time.monotonic()
                late = [i for i in waiting if now >= deadlines[i]]
                if late:
                    codes = {verdicts[i][2] for i in waiting}
                    code = (
                        "running_values_differ"
                        if "running_values_differ" in codes
                        else "omapi_unreachable"
                        if codes == {"omapi_unreachable"}
                        else "pair_not_normal"
                    )
                    when = f"within {probes[late[0]].policy.timeout:g}s {when}"
                    return self._error(probes, readings, verdicts, waiting, code, when)
                await asyncio.sleep(POLL_INTERVAL)
        finally:
            self.spent += (elapsed := time.monotonic() - start)
            spend("verify", elapsed)

    async def _round(self, probes: list[Probe], deadlines: list[float]) -> list[Reading]:
        """One reading of every probe: servers at once, one server's relationships in turn."""
        readings: list[Reading] = [None] * len(probes)

        async def server(indexes: list[int]) -> None:
            for i in indexes:
                readings[i] = await self._read_one(probes[i], deadlines[i])

        by_server: dict[str, list[int]] = {}
        for i, p in enumerate(probes):
            by_server.setdefault(p.change.name, []).append(i)
        for outcome in await asyncio.gather(
            *(server(ix) for ix in by_server.values()), return_exceptions=True
        ):
            if isinstance(outcome, BaseException):
                raise outcome
        return readings

    async def _read_one(self, probe: Probe, deadline: float) -> Reading:
        name, relationship = probe.key
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), POLL_INTERVAL)):
                state = await probe.change.host.failover_state(relationship)
        except TimeoutError:
            return OmapiUnreachable(f"{name}: no OMAPI answer", server=name)
        except Exception as exc:
            return exc
        self._last[probe.key] = (_now(), state)
        return state

    def _error(
        self,
        probes: list[Probe],
        readings: list[Reading],
        verdicts: list[Verdict],
        bad: list[int],
        code: str,
        when: str,
    ) -> WorkerError:
        seen = [
            None if isinstance(r, Exception) else self._info(p.key)
            for p, r in zip(probes, readings, strict=True)
        ]
        return verify_error(probes, verdicts, seen, bad, code, when)

    # -- the report ----------------------------------------------------------------------------

    def _info(self, key: tuple[str, str]) -> dict[str, Any] | None:
        info = self.running(*key)
        return info.model_dump(mode="json") if info is not None else None

    def running(self, server: str, relationship: str | None = None) -> RunningInfo | None:
        """The last reading on ``server`` (of ``relationship``, or the first one read)."""
        names = [relationship] if relationship else self._names()
        for name in names:
            if (server, name) in self._last:
                at, got = self._last[(server, name)]
                return running_info(name, at, got)
        return None

    def report(self, result: ResultData) -> ResultData:
        """``result`` with the verify fields and each server's last reading."""
        skipped = None
        unread = [c.name for c in self.changes if c.host.omapi is None]
        if unread and (self.ran or self._restarted()):
            skipped = (
                NO_OMAPI
                if len(unread) == len(self.changes)
                else f"{NO_OMAPI} for " + (", ".join(unread))
            )
        return result.model_copy(
            update={
                "warnings": [*result.warnings, *self.notes],
                "servers": [
                    s.model_copy(update={"running": self.running(s.name)}) for s in result.servers
                ],
                "verified": self.verified,
                "verifyMs": round(self.spent * 1000) if self.ran else None,
                "verifySkipped": skipped,
            }
        )

    def _restarted(self) -> bool:
        return any(c.restarted or c.restart_attempted for c in changed_only(self.changes))


def _now() -> datetime:
    return datetime.now(UTC)


__all__ = ["NO_OMAPI", "POLL_INTERVAL", "Verification"]
