"""Wiring for ``run``: inventory -> SSH fleet -> coordinator -> RabbitMQ consumer, and the
HTTP endpoints (metrics, health) beside them.

This is the only module that knows all the layers; each of them knows only the one below.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import structlog

from worker.change.coordinator import Announce, ChangeOptions, execute
from worker.change.inflight import InFlight
from worker.consumer.app import run_worker
from worker.health import Readiness, serving
from worker.logging import configure_logging
from worker.messages import ModifyRequest, RemoveRequest, ResultData
from worker.metrics import observed_change
from worker.settings import Settings
from worker.transport.preflight import check_inventory
from worker.transport.ssh import SshFleet

log = structlog.get_logger("worker.service")


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Consume requests until ``stop`` is set, then finish what is in flight and return.

    The inventory and the files it names are checked before the broker is contacted, so a
    typo is reported at once (``InventoryError``, every problem listed), not mid-change.
    With ``http_port`` set, the HTTP endpoints (:mod:`worker.health`) serve from the start
    (``/readyz`` 503 until the worker consumes) until the worker has stopped.
    """
    configure_logging(settings)
    readiness = Readiness()
    async with serving(settings, readiness):
        inventory = check_inventory(settings.inventory)
        fleet = SshFleet(inventory, settings)
        readiness.inventory = True
        options = ChangeOptions(
            lock_timeout=settings.lock_timeout,
            backup_retention=settings.backup_retention,
            journal_retention=settings.journal_retention,
            max_diff_bytes=settings.max_diff_bytes,
        )

        inflight = InFlight()

        async def handler(
            request: ModifyRequest | RemoveRequest, request_id: str, announce: Announce
        ) -> ResultData:
            def start() -> Awaitable[ResultData]:
                change = execute(request, request_id, fleet, options, announce)
                return observed_change(request.operation.value, change)

            return await inflight.run(request_id, start)

        log.info(
            # The count, not the names: a fleet's names make one line of tens of KB, which
            # log shippers split; the inventory file has them.
            "worker starting",
            servers=len(inventory.servers),
            inventory=str(settings.inventory),
        )
        try:
            await run_worker(settings, handler, stop, readiness)
        finally:
            await fleet.close()
            log.info("worker stopped")
