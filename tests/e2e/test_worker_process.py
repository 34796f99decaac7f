"""The real process: ``python -m worker.cli run --inventory FILE`` and ``publish ... --wait``.

The worker runs as a subprocess configured only by ``DHCP_FAILOVER_*`` variables naming this
test's exchanges and queues, against real sshd hosts and the real broker; it gets a real
SIGTERM. The CLI publisher is a subprocess too, judged by its output and exit status.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aio_pika
import pytest
from aio_pika.abc import AbstractConnection

from tests.change.helpers import PRIMARY_AFTER, SECONDARY_AFTER, sha
from tests.consumer.support import EventTap, assert_depth, consumer_count, get_one
from tests.e2e.support import (
    REPO,
    assert_untouched,
    modify_body,
    new_request_id,
    rewrite_restart_command,
    slow_restart,
    worker_env,
)
from tests.faults.cluster_support import WorkerProcess
from tests.transport.support import processes
from worker.consumer.client import publish_request
from worker.demo import PRIMARY, RELATIONSHIP, SECONDARY
from worker.demo.localhosts import LocalHosts, Restart
from worker.messages import ResultEvent
from worker.settings import Settings
from worker.transport import SshFleet, SshOptions, load_inventory

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CLI = [sys.executable, "-m", "worker.cli"]
#: How long the secondary's restart takes in the SIGTERM test: the change is in flight
#: for at least this long after the signal.
SLOW_RESTART_SECONDS = 2.0


async def wait_until(condition: Callable[[], bool], what: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def consumers(amqp: AbstractConnection, settings: Settings) -> int:
    with contextlib.suppress(aio_pika.exceptions.ChannelNotFoundEntity):
        return await consumer_count(amqp, settings.request_queue)
    return 0


@pytest.fixture
def settings(broker_settings: Settings, sample_hosts: LocalHosts) -> Settings:
    """This test's names, and bounds for the SSH side well under the test's timeout."""
    return broker_settings.model_copy(
        update={
            "inventory": sample_hosts.inventory_path,
            "connect_timeout": 5.0,
            "command_timeout": 20.0,
            "lock_timeout": 10.0,
            "log_format": "json",
        }
    )


@pytest.fixture
def start_worker(
    tmp_path: Path, settings: Settings, sample_hosts: LocalHosts
) -> Iterator[Callable[[], WorkerProcess]]:
    """Starts the worker process; at teardown it is ended (TERM, then KILL) if still running.

    Depends on ``sample_hosts`` so that the hosts are stopped after the worker.
    """
    started: list[WorkerProcess] = []

    def start() -> WorkerProcess:
        log = tmp_path / f"worker-{len(started)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [*CLI, "run", "--inventory", str(sample_hosts.inventory_path)],
                cwd=REPO,
                env=worker_env(settings),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        worker = WorkerProcess(process, log)
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            if worker.process.poll() is None:
                worker.process.terminate()
                try:
                    worker.process.wait(10)
                except subprocess.TimeoutExpired:
                    worker.process.kill()
                    worker.process.wait(10)


async def until_consuming(
    worker: WorkerProcess, amqp: AbstractConnection, settings: Settings, within: float = 30.0
) -> None:
    """Until the worker process's consumer is registered on the request queue."""
    deadline = time.monotonic() + within
    while await consumers(amqp, settings) < 1:
        assert worker.process.poll() is None, f"the worker exited:\n{worker.output()[-4000:]}"
        assert time.monotonic() < deadline, f"no consumer in {within}s:\n{worker.output()[-4000:]}"
        await asyncio.sleep(0.05)


@pytest.fixture
async def consuming(
    start_worker: Callable[[], WorkerProcess], amqp: AbstractConnection, settings: Settings
) -> WorkerProcess:
    """A started worker process, consuming."""
    worker = start_worker()
    await until_consuming(worker, amqp, settings)
    return worker


async def test_sigterm_mid_change_lets_the_worker_process_finish_it_answer_it_ack_it_and_exit_0(
    sample_hosts: LocalHosts,
    settings: Settings,
    start_worker: Callable[[], WorkerProcess],
    amqp: AbstractConnection,
    tap: EventTap,
) -> None:
    primary, secondary = sample_hosts.hosts[PRIMARY], sample_hosts.hosts[SECONDARY]
    begun = slow_restart(sample_hosts, SECONDARY, SLOW_RESTART_SECONDS)
    worker = start_worker()
    await until_consuming(worker, amqp, settings)
    request_id = new_request_id("sigterm")
    later_id = new_request_id("after-sigterm")

    await publish_request(settings, modify_body(request_id), "request.modify")
    # The primary is committed and restarted, the secondary's restart has begun: mid-commit.
    await wait_until(begun.exists, "the secondary's restart to begin")
    assert primary.restarts() == [Restart("ok", sha(PRIMARY_AFTER))]
    worker.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert secondary.restarts() == []  # still in flight when the signal went out

    # It stops consuming at once (while the change runs on): a request published now waits
    # in the queue for another worker.
    while await consumers(amqp, settings) > 0:
        assert worker.process.poll() is None, "exited before the change in flight finished"
        assert time.monotonic() - signalled < 10, "the consumer was not cancelled"
        await asyncio.sleep(0.02)
    await publish_request(settings, modify_body(later_id), "request.modify")

    assert await worker.exit_status(within=60) == 0, worker.output()[-4000:]
    assert time.monotonic() - signalled >= SLOW_RESTART_SECONDS * 0.5  # it waited for it

    # The change finished on both hosts ...
    assert primary.config_bytes() == PRIMARY_AFTER.encode()
    assert secondary.config_bytes() == SECONDARY_AFTER.encode()
    assert secondary.restarts() == [Restart("ok", sha(SECONDARY_AFTER))]
    # ... its event was published (and only its) ...
    checked = await tap.next_checked(within=5)
    assert checked.event.id == f"{request_id}/succeeded"
    assert checked.message.routing_key == "event.modify.succeeded"
    assert [(s.name, s.state, s.restarted) for s in checked.event.data.servers] == [
        (PRIMARY, "new", True),
        (SECONDARY, "new", True),
    ]
    await tap.assert_quiet(0.5)
    # ... and it was acked: the only request left is the one published after the signal,
    # never started; nothing was dead-lettered.
    await assert_depth(amqp, settings.request_queue, 1)
    left = await get_one(amqp, settings.request_queue)
    assert left.message_id == later_id and not left.redelivered
    await assert_depth(amqp, settings.request_queue, 0)
    await assert_depth(amqp, settings.dead_letter_queue, 0)
    assert '"worker stopped"' in worker.output()


def publish_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "publish", *args],
        cwd=REPO,
        env=worker_env(settings),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


async def test_publish_wait_prints_the_workers_event_and_exits_0_or_2_when_rejected(
    sample_hosts: LocalHosts, settings: Settings, consuming: WorkerProcess, tap: EventTap
) -> None:
    primary, secondary = sample_hosts.hosts[PRIMARY], sample_hosts.hosts[SECONDARY]
    before = {name: host.config_bytes() for name, host in sample_hosts.hosts.items()}
    rejected_id, request_id = new_request_id("cli-rejected"), new_request_id("cli-modify")
    common = ["--name", RELATIONSHIP, "--mclt", "1800", "--port", "648", "--wait"]

    rejected = await asyncio.to_thread(
        publish_cli,
        settings,
        "modify",
        *common,
        "--primary-server", "dhcp9.example.net",
        "--secondary-server", SECONDARY,
        "--request-id", rejected_id,
    )  # fmt: skip

    assert rejected.returncode == 2, rejected.stderr
    event = ResultEvent.model_validate_json(rejected.stdout)
    assert event == (await tap.next_checked()).event
    assert event.id == f"{rejected_id}/rejected"
    assert event.data.error is not None and event.data.error.code == "unknown_server"
    assert_untouched(sample_hosts, before)

    applied = await asyncio.to_thread(
        publish_cli,
        settings,
        "modify",
        *common,
        "--primary-server", PRIMARY,
        "--secondary-server", SECONDARY,
        "--request-id", request_id,
        "--comment", "CHG-1234 through the CLI",
    )  # fmt: skip

    assert applied.returncode == 0, applied.stderr
    event = ResultEvent.model_validate_json(applied.stdout)
    assert event == (await tap.next_checked()).event
    assert event.id == f"{request_id}/succeeded"
    assert event.type == "net.dhcp.failover.modify.succeeded"
    assert [s.sha256After for s in event.data.servers] == [
        primary.config_sha256(),
        secondary.config_sha256(),
    ]
    assert primary.config_bytes() == PRIMARY_AFTER.encode()
    assert secondary.config_bytes() == SECONDARY_AFTER.encode()
    assert consuming.process.poll() is None  # the worker is still serving


async def test_a_killed_worker_process_leaves_no_command_running_once_its_lock_is_free(
    sample_hosts: LocalHosts,
    start_worker: Callable[[], WorkerProcess],
    amqp: AbstractConnection,
    settings: Settings,
) -> None:
    ticks = sample_hosts.hosts[SECONDARY].root / "ticks"
    tick = f"date +%s.%N >> {shlex.quote(str(ticks))}; sleep 0.05"  # bounded: about 20 s
    rewrite_restart_command(
        sample_hosts,
        SECONDARY,
        lambda cmd: f"n=0; while [ $n -lt 400 ]; do {tick}; n=$((n+1)); done",
    )
    worker = start_worker()
    await until_consuming(worker, amqp, settings)
    await publish_request(settings, modify_body(new_request_id("killed")), "request.modify")
    await wait_until(lambda: ticks.exists() and len(ticks.read_text().split()) >= 3, "ticks")
    worker.process.kill()  # mid-commit, the secondary's restart running: no cleanup code runs
    await asyncio.to_thread(worker.process.wait, 10)
    inventory = load_inventory(sample_hosts.inventory_path)
    async with SshFleet(inventory, SshOptions(connect_timeout=5)) as fleet:
        async with fleet.host(SECONDARY).lock(15):
            locked_at = time.time()
        await asyncio.sleep(1.0)  # a restart still running would tick 20 times meanwhile
    assert max(float(t) for t in ticks.read_text().split()) < locked_at
    assert not processes(sample_hosts, str(ticks))
