"""The plan step of a change: read every involved server's live tree, compute its candidate.

No writes, and no lock needed (a modify's are held where they were free: :func:`locks_first`).
The reads run on the event loop; the CPU-heavy part (parsing, editing, checking the pair, the
diffs and hashes) runs in a worker thread, so a 20,000-subnet config never stalls AMQP
heartbeats, SSH keepalives or the other changes in flight.

Another change unfinished on a server is looked at here too: one that has in fact ended (a
done record on another of its servers) is completed on the spot (:func:`refuse_if_unfinished`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog
from pydantic import TypeAdapter, ValidationError

from worker.change.aio import retrieve
from worker.change.finish import complete, ended_elsewhere
from worker.change.journal import journal_dir, list_journal_dir, unfinished_changes
from worker.change.locks import taking
from worker.change.model import ServerChange, planned_change
from worker.change.plan import ServerPlan, plan_modify, plan_remove, remove_partners
from worker.change.ports import RemoteHost
from worker.change.run import Preplan, Run
from worker.change.snapshot import Snapshot, read_snapshot
from worker.dhcpconf import ConfigSet
from worker.errors import (
    Failed,
    PairMismatch,
    Rejected,
    RoleMismatch,
    UnknownServer,
    WorkerError,
)
from worker.messages import (
    DeconfigureAction,
    ModifyRequest,
    Phase,
    RemoveParams,
    RemoveRequest,
    RequestId,
    WarningInfo,
)
from worker.metrics import timed

log = structlog.stdlib.get_logger("worker.change.coordinator")

_REQUEST_ID: TypeAdapter[str] = TypeAdapter(RequestId)
Planned = tuple[list[ServerChange], list[WarningInfo]]


def check_request_id(request_id: str) -> None:
    """The request id names files on the servers: refuse anything but the safe set."""
    try:
        _REQUEST_ID.validate_python(request_id)
    except ValidationError:
        raise Rejected(
            f"request id {request_id[:140]!r} is not usable: 1-128 of [A-Za-z0-9._:-]",
            code="invalid_request_id",
        ) from None


def anchors(request: ModifyRequest | RemoveRequest) -> list[str]:
    """The servers known before any config is read: where a journal is looked up first."""
    if isinstance(request, ModifyRequest):
        return [request.params.primary_server, request.params.secondary_server]
    return [request.params.server]


async def plan_when_others_end(run: Run) -> Planned:
    """Plan, even if another change's journal was seen before the locks: that change may be
    running still (its worker holds the lock while it finishes). The check under the locks
    decides, before anything is touched. Only if the plan fails or finds nothing to change
    on what may be a half-changed pair (it takes no lock then) does it wait for those
    servers' locks once and plan afresh; unfinished then means cut off, and the request
    fails with ``unfinished_change``. (Where the run holds those locks already, there is
    nothing to wait for: the plan afresh is the strict one.)

    A pair whose halves disagree on reads taken ahead of the locks or without them is the
    same case without a journal in sight: the reads may straddle another change's two
    commits, and its done records be written before the listing. It waits likewise and
    plans afresh from new reads; only a pair that still disagrees is rejected."""
    try:
        changes, warnings = await plan(run)
        if not run.busy or any(c.changed for c in changes):
            return changes, warnings
        waiting, reason = sorted(run.busy), "another change is unfinished there"
    except _TORN as exc:
        if not (run.busy or run.unlocked_reads):
            raise
        waiting = sorted(run.busy | run.unlocked_reads)
        reason = f"the pair disagreed ({exc.code}) on reads taken outside the locks"
    except WorkerError:
        if not run.busy:
            raise
        waiting, reason = sorted(run.busy), "another change is unfinished there"
    log.info("change.waiting", servers=waiting, reason=reason)
    run.drop_prefetched()
    run.listings.clear()
    run.busy.clear()
    run.unlocked_reads.clear()
    run.strict = True
    hosts = [run.fleet.host(n) for n in waiting]
    async with taking(hosts, run.options.lock_timeout, run.held):
        pass
    return await plan(run)


#: Rejections that compare the two servers' trees: a read of each at another moment can
#: cause them.
_TORN = (PairMismatch, RoleMismatch)


@timed("plan")
async def plan(run: Run) -> Planned:
    """Read every involved server's live tree and compute its candidate; no writes."""
    request = run.request
    if isinstance(request, ModifyRequest):
        p = request.params
        hosts = {n: run.fleet.host(n) for n in (p.primary_server, p.secondary_server)}
        changes, warnings = await _modify_plan(run, hosts)
    else:
        changes, warnings = await _plan_remove(request.params, run)
    run.planned, run.warnings = changes, warnings
    log.info(
        "plan.done",
        servers=[c.name for c in changes],
        changed=[c.name for c in changes if c.changed],
    )
    return changes, warnings


async def _modify_plan(run: Run, hosts: dict[str, RemoteHost]) -> Planned:
    """A modify's candidates: the plan computed ahead from the reads ahead (:func:`prefetch`)
    when this plan reads the same trees (it takes those reads), else computed now."""
    ahead, run.preplanned = run.preplanned, None
    try:
        snaps = await snapshots(hosts, run)
        if ahead is not None:
            read, changes, warnings = await ahead
            if all(read.get(n) is snap for n, snap in snaps.items()):
                return changes, warnings
        return await asyncio.to_thread(_modify_changes, run, hosts, snaps)
    finally:
        if ahead is not None and not ahead.done():
            ahead.cancel()
        if ahead is not None:
            ahead.add_done_callback(retrieve)


async def _preplan(
    run: Run, hosts: dict[str, RemoteHost], reads: dict[str, asyncio.Future[Snapshot]]
) -> Preplan:
    """The plan of a modify from its reads ahead, in a worker thread as soon as they are in:
    the CPU of parsing and editing overlaps the round trips of the locks."""
    await asyncio.wait(reads.values())  # not gather: a cancel here must not cancel the reads
    snaps = {name: reading.result() for name, reading in reads.items()}
    changes, warnings = await asyncio.to_thread(_modify_changes, run, hosts, snaps)
    return snaps, changes, warnings


def _modify_changes(run: Run, hosts: dict[str, RemoteHost], snaps: dict[str, Snapshot]) -> Planned:
    """In a worker thread: both candidates of a modify."""
    assert isinstance(run.request, ModifyRequest)
    primary, secondary = (parse(snaps[n]) for n in hosts)
    plans = plan_modify(run.request.params, primary, secondary)
    return _changes(run, hosts, snaps, plans), [w for plan in plans for w in plan.warnings]


async def _plan_remove(p: RemoveParams, run: Run) -> Planned:
    """Remove: the partners come from the peer blocks' ``peer address`` and the inventory."""
    fleet = run.fleet
    hosts = {p.server: fleet.host(p.server)}
    snaps = await snapshots(hosts, run)
    configs = {p.server: await asyncio.to_thread(parse, snaps[p.server])}
    pairs: dict[str, tuple[str, str]] = {}
    for name, (role, address) in remove_partners(configs[p.server], p.names).items():
        partner = fleet.server_for_address(address)
        if partner is None:
            raise UnknownServer(
                f"failover peer {name!r} on {p.server}: its peer address {address} is not "
                "a server in the inventory",
                server=p.server,
                phase=Phase.plan,
            )
        if partner == p.server:
            raise PairMismatch(
                f"failover peer {name!r} on {p.server}: its peer address {address} is "
                f"{p.server} itself",
                server=p.server,
            )
        pairs[name] = (p.server, partner) if role == "primary" else (partner, p.server)
    partners = {n: fleet.host(n) for pair in pairs.values() for n in pair if n not in hosts}
    snaps.update(await snapshots(partners, run))
    hosts.update(partners)

    def compute() -> Planned:
        """In a worker thread: the partners parsed, every server's candidate."""
        configs.update({n: parse(snaps[n]) for n in partners})
        plans = list(plan_remove(p, configs, pairs))
        warnings = [w for plan in plans for w in plan.warnings]
        return _changes(run, hosts, snaps, plans), warnings + _same_ranges_warnings(
            p, configs, pairs
        )

    return await asyncio.to_thread(compute)


def _changes(
    run: Run, hosts: dict[str, RemoteHost], snaps: dict[str, Snapshot], plans: Sequence[ServerPlan]
) -> list[ServerChange]:
    changes = [
        planned_change(
            hosts[plan.server],
            snaps[plan.server],
            plan,
            run.request_id,
            run.stamp,
            run.options.max_diff_bytes,
        )
        for plan in plans
    ]
    changes.sort(key=lambda c: list(hosts).index(c.name))  # commit order: anchor first
    return changes


def _same_ranges_warnings(
    p: RemoveParams, configs: dict[str, ConfigSet], pairs: dict[str, tuple[str, str]]
) -> list[WarningInfo]:
    """DeconfigureAction None leaves both servers serving the same pools: say which."""
    if p.deconfigure_action is not DeconfigureAction.none:
        return []
    warnings = []
    for name, (primary, secondary) in pairs.items():
        scopes = [s.label for s in configs[primary].peer(name).pools]
        if scopes:
            message = (
                f"DeconfigureAction None: {primary} and {secondary} now both lease from the "
                f"same ranges, formerly shared by failover peer {name!r}: " + "; ".join(scopes)
            )
            warnings.append(WarningInfo(code="same_ranges", message=message, server=secondary))
    return warnings


async def snapshots(hosts: dict[str, RemoteHost], run: Run) -> dict[str, Snapshot]:
    """Each server's live tree, and whether another change is unfinished there (from the
    listing the journal lookup just took, if it took one)."""

    async def check(host: RemoteHost) -> None:
        try:
            await refuse_if_unfinished(run, host, run.listings)
        except Failed as exc:
            if run.strict or exc.code != "unfinished_change":
                raise
            run.busy.add(host.name)  # running or cut off: the check under the lock says

    async def read(host: RemoteHost) -> Snapshot:
        ahead = run.prefetched.pop(host.name, None)
        if ahead is not None or host.name not in run.held:
            run.unlocked_reads.add(host.name)
        reading = ahead or read_snapshot(host)
        snapshot, _ = await asyncio.gather(reading, check(host))
        return snapshot

    snaps = await asyncio.gather(*(read(h) for h in hosts.values()))
    return dict(zip(hosts, snaps, strict=True))


def prefetch(run: Run) -> None:
    """Start reading the anchors' live trees while their journal directories are listed:
    read-only, so harmless when the lookup ends the request instead (they are dropped then).
    Whether another change is unfinished there is still checked before the plan uses them,
    and under the locks the live bytes are compared with them again."""
    hosts = {}
    for name in anchors(run.request):
        try:
            hosts[name] = host = run.fleet.host(name)
        except Exception:
            return  # the plan says why, as it would have
        run.prefetched[name] = asyncio.ensure_future(read_snapshot(host))
    if isinstance(run.request, ModifyRequest):
        run.preplanned = asyncio.ensure_future(_preplan(run, hosts, dict(run.prefetched)))


def locks_first(run: Run) -> list[RemoteHost]:
    """A modify names both its servers, and almost every modify changes them: try their
    locks at once, without waiting, beside the plan's first reads. The lock request brings
    the journal directory's listing, which then answers the journal lookup and the plan's
    look at other changes (no listing of their own, no second agent), and the lock's round
    trip is not added after the plan. A remove learns its partners from the configs: it
    locks after the plan."""
    if not isinstance(run.request, ModifyRequest):
        return []
    try:
        return [run.fleet.host(n) for n in anchors(run.request)]
    except UnknownServer:
        return []  # the plan says why, as it would have


async def refuse_if_unfinished(
    run: Run, host: RemoteHost, listings: dict[str, list[str]] | None
) -> None:
    """A change cut off on this server must end before another starts: planning on a
    half-changed pair would be wrong, and finishing it later would overwrite this one.

    A running journal whose change has a done record on another of its servers is not
    unfinished: that change has ended, only its bookkeeping here was lost (a failed write).
    It is completed here and now, so a finished change never blocks later ones."""
    if listings is None:
        listings = {}
    names = await list_journal_dir(host, listings)
    blocking = []
    for other in await unfinished_changes(host, run.request_id, names):
        outcome = await ended_elsewhere(run.fleet, host, other, names)
        if outcome is None:
            blocking.append(other)
            continue
        log.warning("journal.ended_elsewhere", server=host.name, request=other)
        await complete(run.fleet, other, outcome, [host.name], {host.name: names})
        if other in await unfinished_changes(host, run.request_id, names):
            blocking.append(other)
    if blocking:
        raise Failed(
            f"{host.name} has an unfinished change (request {', '.join(blocking)}) in "
            f"{journal_dir(host)}; its redelivery finishes or undoes it, or an operator "
            "must clear it first",
            code="unfinished_change",
            server=host.name,
            detail={"requests": blocking},
        )


def parse(snapshot: Snapshot) -> ConfigSet:
    try:
        return ConfigSet.parse(snapshot.texts(), snapshot.main, snapshot.base)
    except WorkerError as exc:
        exc.server = exc.server or snapshot.server
        raise
