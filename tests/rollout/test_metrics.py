"""The rollout's progress gauges, scraped over HTTP while its waves run.

The rollout runs in this process on the rig (real broker, real worker, real sshd hosts)
with DHCP_FAILOVER_HTTP_PORT set for it alone; each time a pair ends, the observer scrapes
``/metrics`` (the server runs in its own thread, so a blocking scrape from the event loop is
answered).
"""

from __future__ import annotations

import asyncio
import urllib.request
from dataclasses import dataclass, field

import pytest

from tests.rollout.conftest import RigFactory
from tests.test_metrics import Scrape
from worker.demo.processes import free_port
from worker.rollout.engine import Observer, execute, prepare
from worker.rollout.results import PairResult
from worker.rollout.waves import parse_waves
from worker.transport.inventory import load_inventory

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

GAUGE = "dhcp_failover_rollout_pairs"


@dataclass
class Scraper(Observer):
    """Scrapes the rollout's gauges each time a pair of the waves ends."""

    url: str
    rollout: str
    seen: list[dict[str, float]] = field(default_factory=list)

    def finished(self, result: PairResult) -> None:
        if result.dry_run:
            return
        with urllib.request.urlopen(self.url, timeout=5) as response:
            found = Scrape(response.read().decode())
        states = ("planned", "done", "failed", "in_flight")
        self.seen.append({s: found(GAUGE, rollout=self.rollout, state=s) for s in states})


async def test_the_rollout_gauges_count_pairs_done_and_in_flight(rig: RigFactory) -> None:
    made = await rig(3)
    spec = made.spec("gauges", waves=parse_waves("1,100%"))
    port = free_port()
    settings = made.stack.settings.model_copy(update={"http_port": port})
    scraper = Scraper(f"http://127.0.0.1:{port}/metrics", spec.rollout_id)
    inventory = load_inventory(made.hosts.inventory_path)
    stop = asyncio.Event()
    prepared = await prepare(spec, settings, inventory, scraper, stop)
    report = await execute(prepared, settings, scraper, stop)

    assert report.exit_status() == 0
    # The canary alone, then the two others at once: the first of them to end sees the
    # other still in flight.
    assert scraper.seen == [
        {"planned": 3, "done": 1, "failed": 0, "in_flight": 0},
        {"planned": 3, "done": 2, "failed": 0, "in_flight": 1},
        {"planned": 3, "done": 3, "failed": 0, "in_flight": 0},
    ]
