"""Log lines: JSON off a terminal, readable on one, request context bound, secrets never."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from worker.logging import bind_request, configure_logging, get_logger, redact_url
from worker.settings import Settings

pytestmark = pytest.mark.timeout(10)


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state; put it back after each test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_off_a_terminal_every_line_is_json_with_level_time_logger_and_request_context() -> None:
    stream = io.StringIO()
    configure_logging(Settings(log_format="auto"), stream=stream)
    with bind_request("req-1", "dhcp-failover", "dhcp1.example.net"):
        get_logger("worker.test").info("request received", redelivered=False)
    get_logger("worker.test").warning("outside")

    first, second = lines(stream)
    assert first["event"] == "request received"
    assert first["level"] == "info"
    assert first["logger"] == "worker.test"
    assert first["timestamp"].endswith("Z")
    assert (first["requestId"], first["relationship"], first["server"]) == (
        "req-1",
        "dhcp-failover",
        "dhcp1.example.net",
    )
    assert first["redelivered"] is False
    assert "requestId" not in second


def test_on_a_terminal_lines_are_for_people_not_json() -> None:
    stream = Tty()
    configure_logging(Settings(log_format="auto"), stream=stream)
    get_logger("worker.test").info("worker started", queue="q")
    text = stream.getvalue()
    assert "worker started" in text and "queue" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


def test_stdlib_lines_from_libraries_come_out_in_the_same_json() -> None:
    stream = io.StringIO()
    configure_logging(Settings(log_format="json"), stream=stream)
    logging.getLogger("aio_pika.robust_connection").warning("Connection to %s closed", "x")
    [line] = lines(stream)
    assert line["event"] == "Connection to x closed"
    assert line["logger"] == "aio_pika.robust_connection"
    assert line["level"] == "warning"


def test_passwords_never_reach_the_log() -> None:
    stream = io.StringIO()
    configure_logging(Settings(log_format="json"), stream=stream)
    log = get_logger("worker.test")
    log.info("connecting", amqp_url="amqp://worker:s3cr3t-pw@rabbit:5672/prod")
    log.info("login", password="hunter2", token="t0k3n")
    logging.getLogger("lib").error("failed to reach amqps://u:pa55w0rd@host/vhost now")
    try:
        raise RuntimeError("connect amqp://x:exc-secret@h/ failed")
    except RuntimeError:
        log.exception("crashed")

    text = stream.getvalue()
    for secret in ("s3cr3t-pw", "hunter2", "t0k3n", "pa55w0rd", "exc-secret"):
        assert secret not in text
    assert "amqp://worker:***@rabbit:5672/prod" in text
    assert '"exception"' in text  # the traceback is kept, minus the password


def test_the_level_comes_from_the_settings() -> None:
    stream = io.StringIO()
    configure_logging(Settings(log_format="json", log_level="warning"), stream=stream)
    get_logger("worker.test").info("quiet")
    get_logger("worker.test").warning("loud")
    assert [line["event"] for line in lines(stream)] == ["loud"]


def test_configuring_twice_does_not_duplicate_lines() -> None:
    stream = io.StringIO()
    configure_logging(Settings(log_format="json"), stream=stream)
    configure_logging(Settings(log_format="json"), stream=stream)
    get_logger("worker.test").info("once")
    assert len(lines(stream)) == 1


async def test_concurrent_requests_keep_their_own_context() -> None:
    stream = io.StringIO()
    configure_logging(Settings(log_format="json"), stream=stream)

    async def one(request_id: str) -> None:
        with bind_request(request_id):
            await asyncio.sleep(0.01)
            get_logger("worker.test").info("step")

    await asyncio.gather(one("a"), one("b"))
    assert sorted(line["requestId"] for line in lines(stream)) == ["a", "b"]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://guest:guest@localhost:5672/", "amqp://guest:***@localhost:5672/"),
        ("amqps://u:p%40ss@h/vh?heartbeat=5", "amqps://u:***@h/vh?heartbeat=5"),
        ("amqp://localhost/", "amqp://localhost/"),
    ],
)
def test_redact_url_hides_only_the_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_asyncssh_channel_chatter_is_hidden_at_info_but_its_warnings_are_not() -> None:
    import io
    import logging

    from worker.logging import configure_logging

    stream = io.StringIO()
    configure_logging(log_format="json", level="info", stream=stream)
    try:
        logging.getLogger("asyncssh").info("[conn=1, chan=0] Closing channel")
        logging.getLogger("asyncssh").warning("host key mismatch")
    finally:
        logging.getLogger("asyncssh").setLevel(logging.NOTSET)
    out = stream.getvalue()
    assert "Closing channel" not in out and "host key mismatch" in out
