"""Wiring for ``run``: inventory -> SSH fleet -> coordinator -> RabbitMQ consumer.

This is the only module that knows all the layers; each of them knows only the one below.
"""

from __future__ import annotations

import asyncio

import structlog

from worker.change.coordinator import Announce, ChangeOptions, execute
from worker.change.inflight import InFlight
from worker.consumer.app import run_worker
from worker.logging import configure_logging
from worker.messages import ModifyRequest, RemoveRequest, ResultData
from worker.settings import Settings
from worker.transport.preflight import check_inventory
from worker.transport.ssh import SshFleet

log = structlog.get_logger("worker.service")


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Consume requests until ``stop`` is set, then finish what is in flight and return.

    The inventory and the files it names are checked before the broker is contacted, so a
    typo is reported at once (``InventoryError``, every problem listed), not mid-change.
    """
    configure_logging(settings)
    inventory = check_inventory(settings.inventory)
    fleet = SshFleet(inventory, settings)
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
        return await inflight.run(
            request_id, lambda: execute(request, request_id, fleet, options, announce)
        )

    log.info(
        "worker starting", servers=sorted(inventory.servers), inventory=str(settings.inventory)
    )
    try:
        await run_worker(settings, handler, stop)
    finally:
        await fleet.close()
        log.info("worker stopped")
