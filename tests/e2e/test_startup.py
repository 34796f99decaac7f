"""``run`` and ``publish`` against a broker that is late, missing or refusing (issue 13).

The worker is the real process; the broker is the real RabbitMQ, reached through a TCP proxy
that is not listening yet when the worker starts ("RabbitMQ starts after the worker"). Each
test checks the one-line message, the exit status and that no traceback is printed.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.consumer.proxy import TcpProxy
from tests.e2e.support import worker_env
from tests.test_cli_errors import write_inventory
from worker.demo.processes import free_port
from worker.failures import EXIT_NOPERM, EXIT_UNAVAILABLE
from worker.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

CLI = [sys.executable, "-m", "worker.cli"]


def with_netloc(url: str, *, password: str | None = None, port: int | None = None) -> str:
    parts = urlsplit(url)
    user = parts.username or "guest"
    secret = password if password is not None else (parts.password or "")
    host = parts.hostname or "127.0.0.1"
    return urlunsplit(parts._replace(netloc=f"{user}:{secret}@{host}:{port or parts.port}"))


def with_vhost(url: str, vhost: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{vhost}"))


def start_worker(
    settings: Settings, inventory: Path, log: Path, **env: str
) -> subprocess.Popen[bytes]:
    environment = worker_env(settings) | {"DHCP_FAILOVER_LOG_FORMAT": "json"} | env
    with log.open("wb") as out:
        return subprocess.Popen(
            [*CLI, "run", "--inventory", str(inventory)],
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def finish(process: subprocess.Popen[bytes], within: float) -> int:
    try:
        return process.wait(within)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"the worker did not exit within {within}s") from None


def log_events(log: Path) -> list[dict[str, object]]:
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    return [json.loads(line) for line in lines]


async def test_a_worker_started_before_its_broker_waits_then_consumes(
    broker_settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    late = broker_settings.model_copy(
        update={"amqp_url": with_netloc(broker_settings.amqp_url, port=port)}
    )
    log = tmp_path / "worker.log"
    worker = start_worker(late, write_inventory(tmp_path), log, DHCP_FAILOVER_STARTUP_TIMEOUT="60")
    proxy = TcpProxy(*_host_port(broker_settings.amqp_url))
    try:
        await asyncio.sleep(2.5)  # a few refused attempts
        assert worker.poll() is None, log.read_text()
        await proxy.start(port)  # "RabbitMQ is up"
        publish = await asyncio.create_subprocess_exec(
            *CLI,
            "publish",
            "remove",
            "--server",
            "nowhere",
            "--name",
            "fo",
            "--wait",
            "--timeout",
            "30",
            env=worker_env(broker_settings),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        stdout, _ = await publish.communicate()
        assert publish.returncode == 2, stdout.decode()  # answered: rejected, unknown server
        assert json.loads(stdout)["data"]["error"]["code"] == "unknown_server"
    finally:
        worker.terminate()
        status = await asyncio.to_thread(finish, worker, 30)
        await proxy.close()
    assert status == 0
    events = log_events(log)
    retries = [e for e in events if e["event"] == "broker not reachable yet; retrying"]
    assert len(retries) >= 2
    assert [e["attempt"] for e in retries[:2]] == [1, 2]
    assert any(e["event"] == "worker started" for e in events)
    assert "Traceback" not in log.read_text()


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 5672


def test_a_broker_still_down_at_the_start_up_timeout_ends_the_worker(
    broker_settings: Settings, tmp_path: Path
) -> None:
    down = broker_settings.model_copy(
        update={"amqp_url": with_netloc(broker_settings.amqp_url, port=free_port())}
    )
    log = tmp_path / "worker.log"
    started = time.monotonic()
    worker = start_worker(down, write_inventory(tmp_path), log, DHCP_FAILOVER_STARTUP_TIMEOUT="3")

    status = finish(worker, 30)

    out = log.read_text()
    assert status == EXIT_UNAVAILABLE, out
    assert time.monotonic() - started >= 3
    assert "Error: cannot reach RabbitMQ at amqp://guest:***@127.0.0.1:" in out
    assert "within 3" in out
    assert "Traceback" not in out
    # the same message as a structured log line, for the log pipeline
    failed = [e for e in log_events(log) if e["event"] == "worker stopped on an error"]
    assert failed and "cannot reach RabbitMQ" in str(failed[0]["error"])
    assert failed[0]["exit_status"] == EXIT_UNAVAILABLE


def test_a_wrong_password_is_not_retried(broker_settings: Settings, tmp_path: Path) -> None:
    wrong = broker_settings.model_copy(
        update={"amqp_url": with_netloc(broker_settings.amqp_url, password="wrong-s3cret")}
    )
    log = tmp_path / "worker.log"
    started = time.monotonic()
    worker = start_worker(wrong, write_inventory(tmp_path), log, DHCP_FAILOVER_STARTUP_TIMEOUT="60")

    status = finish(worker, 30)

    out = log.read_text()
    assert status == EXIT_NOPERM, out
    assert time.monotonic() - started < 30  # not the 60 s of retries
    assert "refused the login (ACCESS_REFUSED)" in out
    assert "wrong-s3cret" not in out
    assert "retrying" not in out
    assert "Traceback" not in out


def test_an_unknown_vhost_is_not_retried(broker_settings: Settings, tmp_path: Path) -> None:
    nowhere = broker_settings.model_copy(
        update={"amqp_url": with_vhost(broker_settings.amqp_url, "no-such-vhost")}
    )
    log = tmp_path / "worker.log"
    worker = start_worker(
        nowhere, write_inventory(tmp_path), log, DHCP_FAILOVER_STARTUP_TIMEOUT="60"
    )

    status = finish(worker, 30)

    out = log.read_text()
    assert status == EXIT_NOPERM, out
    assert "refused the virtual host 'no-such-vhost'" in out
    assert "retrying" not in out
    assert "Traceback" not in out


def test_publish_wait_with_no_worker_says_the_request_is_still_queued(
    broker_settings: Settings,
) -> None:
    result = subprocess.run(
        [*CLI, "publish", "remove", "--server", "s", "--name", "fo", "--wait", "--timeout", "1"],
        env=worker_env(broker_settings),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 124
    assert "no result event for" in result.stderr
    assert "within 1s" in result.stderr
    assert "is a worker running?" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
