"""The asyncio helpers of the change layer (one copy each; the transport uses them too).

Why they exist: a step that touches several files or servers at once must not raise while a
sibling is still in flight (a cleanup would race a write), and a commit or rollback cut in
half by a cancel is the one thing worse than either.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine, Sequence
from typing import Any, TypeVar

import structlog

log = structlog.stdlib.get_logger(__name__)

T = TypeVar("T")


async def all_of(steps: Sequence[Awaitable[Any]]) -> None:
    """Await ``steps`` at once; all finish before the first error (in order) is raised."""
    results = await asyncio.gather(*steps, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


def retrieve(future: asyncio.Future[Any]) -> None:
    """A done-callback marking the outcome of a future nobody awaits any more as seen."""
    if not future.cancelled():
        future.exception()


async def run_to_end(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to its end even if the caller is cancelled meanwhile, then re-raise the
    cancellation: a commit or rollback cut in half is the one thing worse than either."""
    task = asyncio.ensure_future(coro)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.cancelled():
                raise
            cancelled = True
            log.warning("change.cancel_deferred", reason="commit in flight")
    if cancelled:
        raise asyncio.CancelledError
    return result
