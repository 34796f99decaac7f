"""One run per request id in this process: a second delivery of a request joins the first.

Why: after an AMQP blip the broker redelivers a request whose change is still running here
(its first delivery's channel died). Run twice, the copy would wait for the locks the first
run holds, time out and publish ``failed``/``lock_timeout`` while the first publishes
``succeeded`` — two outcomes for one request id. Joined, the copy answers with the first run's
result, so both deliveries publish the same event (same deterministic id) and are acked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from worker.messages import ResultData

log = structlog.stdlib.get_logger(__name__)


class InFlight:
    """The runs of this process by request id, while they run."""

    def __init__(self) -> None:
        self._runs: dict[str, asyncio.Future[ResultData]] = {}

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._runs

    async def run(self, request_id: str, start: Callable[[], Awaitable[ResultData]]) -> ResultData:
        """``start()``'s result, or the result of the run of ``request_id`` already going.

        The first caller owns the run: cancelling it cancels the run, as before. A joined
        caller waits shielded (its own cancel leaves the run alone) and, if the run it joined
        was cancelled before an outcome, runs the request itself."""
        while (running := self._runs.get(request_id)) is not None:
            log.info("change.joined", requestId=request_id, reason="already running here")
            try:
                return await asyncio.shield(running)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if not running.cancelled() or (current is not None and current.cancelling()):
                    raise
        task = asyncio.ensure_future(start())
        self._runs[request_id] = task
        task.add_done_callback(lambda t: self._forget(request_id, t))
        return await task

    def _forget(self, request_id: str, task: asyncio.Future[ResultData]) -> None:
        if self._runs.get(request_id) is task:
            del self._runs[request_id]
