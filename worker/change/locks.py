"""Taking every server's change lock a change touches, without deadlock and without waiting
longer than needed.

The name order is what keeps two changes sharing servers from deadlocking; waiting for a lock
in it costs a round trip per server, so all are first *tried* at once without waiting. If some
are busy, the ones held before the first busy one in name order are kept (a prefix of the
order: holding it while waiting is exactly the ordered protocol), the others released, and the
rest taken one by one in order with the bounded wait.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from collections.abc import Set as AbstractSet
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any

import structlog

from worker.change.ports import RemoteHost
from worker.errors import LockLost, LockTimeout
from worker.metrics import LOCK_WAIT

log = structlog.stdlib.get_logger(__name__)

_UNSET = object()


@asynccontextmanager
async def hold_locks(hosts: Iterable[RemoteHost], wait: float) -> AsyncIterator[None]:
    """Every server's change lock, taken as if in name order and released however the body
    ends. A failed release is logged, not raised: the server drops the lock with the
    connection. They are released all at once (last taken first).

    The name order is what keeps two changes sharing servers from deadlocking; waiting for a
    lock in it costs a round trip per server, so all are first *tried* at once without
    waiting. If some are busy, the ones held before the first busy one in name order are kept
    (a prefix of the order: holding it while waiting is exactly the ordered protocol), the
    others released, and the rest taken one by one in order with the bounded wait."""
    unique = {h.name: h for h in hosts}
    names = sorted(unique)
    held: list[Callable[..., Awaitable[bool]]] = []

    async def release(*exc_info: Any) -> None:
        await asyncio.gather(*(r(*exc_info) for r in reversed(held)))

    async def take(name: str, patience: float) -> Callable[..., Awaitable[bool]]:
        lock = unique[name].lock(patience)
        await lock.__aenter__()
        log.info("lock.acquired", server=name)
        return _releaser(lock, name)

    async def try_all() -> int:
        """Try every lock at once without waiting; keep the ones before the first that was
        not taken, release the others; return that one's position."""
        # The tries share one copy of this context, adopted afterwards: a lock may record
        # itself in a context variable (SshHost does, to refuse work once it is lost).
        context = contextvars.copy_context()
        tasks = [asyncio.create_task(take(n, 0.0), context=context) for n in names]
        try:
            await asyncio.wait(tasks)
        finally:  # cancelled: no try left running; whatever was taken is released
            if pending := [task for task in tasks if not task.done()]:
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending)
            for var, value in context.items():
                if var.get(_UNSET) is not value:
                    var.set(value)
            tries: list[BaseException | Callable[..., Awaitable[bool]] | None] = [
                task.exception() or task.result() if task.done() and not task.cancelled() else None
                for task in tasks
            ]
            missed = [not callable(t) for t in tries]
            first = missed.index(True) if True in missed else len(names)
            held.extend(t for t in tries[:first] if callable(t))
            surplus = [t for t in tries[first:] if callable(t)]
            await asyncio.gather(*(r(None, None, None) for r in reversed(surplus)))
        for outcome in tries:
            if isinstance(outcome, BaseException) and not isinstance(outcome, LockTimeout):
                raise outcome
        if first < len(names):
            log.info("lock.busy", server=names[first])
        return first

    try:
        with LOCK_WAIT.time():
            first = await try_all() if len(names) > 1 else 0
            for name in names[first:]:
                held.append(await take(name, wait))
        yield
    except BaseException as exc:
        await release(type(exc), exc, exc.__traceback__)
        raise
    await release(None, None, None)


def taking(
    hosts: Iterable[RemoteHost], wait: float, held: AbstractSet[str]
) -> AbstractAsyncContextManager[None]:
    """:func:`hold_locks` of those of ``hosts`` not in ``held``: the servers whose locks this
    task holds already (a modify's, taken before its journal lookup). Taking one again would
    wait for itself: a second agent's ``flock`` on the same file."""
    return hold_locks([h for h in hosts if h.name not in held], wait)


def lost_locks(hosts: Iterable[RemoteHost]) -> list[str]:
    """The servers whose change lock this task held and lost with its connection."""
    return sorted({h.name for h in hosts if h.lock_lost()})


def refuse_without_locks(hosts: Iterable[RemoteHost]) -> None:
    """An outcome reached after an SSH cut took a lock (steps refused on that server) is not
    recorded or announced: ``LockLost`` makes the coordinator take the locks again and end
    the change from its journals, as a redelivery would."""
    if lost := lost_locks(hosts):
        raise LockLost(f"the change locks of {', '.join(lost)} were lost", server=lost[0])


@asynccontextmanager
async def relocked(hosts: Iterable[RemoteHost], wait: float) -> AsyncIterator[None]:
    """The body under every lock this task holds again: those an SSH cut took are taken
    anew (:func:`hold_locks`), the others are still held."""
    lost = [h for h in hosts if h.lock_lost()]
    if not lost:
        yield
        return
    log.warning("lock.retaken", servers=sorted(h.name for h in lost))
    async with hold_locks(lost, wait):
        yield


def _releaser(
    lock: AbstractAsyncContextManager[None], name: str
) -> Callable[
    [type[BaseException] | None, BaseException | None, TracebackType | None], Awaitable[bool]
]:
    async def release(
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        try:
            await lock.__aexit__(exc_type, exc, tb)
        except Exception as err:
            log.error("lock.release_failed", server=name, error=str(err))
        return False

    return release
