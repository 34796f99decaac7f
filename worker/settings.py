"""One settings object, read from ``DHCP_FAILOVER_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def split_urls(text: str) -> tuple[str, ...]:
    """The URLs of a comma-separated list, blanks dropped (a comma inside a password is
    written ``%2C``)."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


class Settings(BaseSettings):
    """Every name in docs/contract.md §1 is a default here and can be changed by configuration."""

    model_config = SettingsConfigDict(env_prefix="DHCP_FAILOVER_", extra="ignore")

    amqp_url: str = Field(
        default="amqp://guest:guest@localhost:5672/",
        description="RabbitMQ URL, or a comma-separated list of URLs naming the nodes of a "
        "cluster (worker/consumer/connect.py); credentials are never logged.",
    )
    request_exchange: str = "dhcp.failover"
    request_queue: str = "dhcp.failover.requests"
    request_binding_key: str = "request.#"
    dead_letter_exchange: str = "dhcp.failover.dlx"
    dead_letter_queue: str = "dhcp.failover.dead"
    event_exchange: str = "dhcp.failover.events"
    delivery_limit: int = Field(default=5, ge=1, description="Quorum queue x-delivery-limit.")
    prefetch: int = Field(default=32, ge=1, description="Unacked requests held per worker.")
    concurrency: int = Field(
        default=16,
        ge=1,
        description="Changes run at once per worker (restarts take time: docs/performance.md).",
    )
    event_source: str = "urn:dhcp-failover-worker"
    reply_to_prefixes: str = Field(
        default="amq.gen-",
        description="Comma-separated queue-name prefixes a request's reply_to may have for the "
        "worker to answer there (amq.rabbitmq.reply-to, direct reply-to, always may). The "
        "default covers server-named queues, which `publish --wait` uses.",
    )

    startup_timeout: float = Field(
        default=60.0,
        ge=0,
        description="Seconds `run` waits for the broker to accept a first connection, with "
        "exponential backoff (0: forever). A refused login or vhost is not retried.",
    )

    inventory: Path = Path("/etc/dhcp-failover-worker/inventory.toml")
    connect_timeout: float = Field(default=10.0, gt=0)
    command_timeout: float = Field(default=60.0, gt=0)
    lock_timeout: float = Field(default=30.0, gt=0)
    backup_retention: int = Field(default=5, ge=1)
    journal_retention: int = Field(
        default=100, ge=1, description="Finished-change records kept per server (idempotency)."
    )
    max_diff_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="The most of one server's diff an event or journal carries; beyond it the "
        "diff is cut, flagged diffTruncated and described by its sha256 and line counts.",
    )

    http_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="TCP port of /metrics, /healthz and /readyz (worker/health.py); 0: off.",
    )
    http_host: str = Field(
        default="127.0.0.1",
        description="Address the HTTP endpoints listen on: loopback by default (they have no "
        "authentication); 0.0.0.0 (or ::) for a scraper on another host or container.",
    )

    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("amqp_url")
    @classmethod
    def _some_amqp_url(cls, value: str) -> str:
        if not split_urls(value):
            raise ValueError("no AMQP URL: give one, or a comma-separated list for a cluster")
        return value

    @property
    def amqp_urls(self) -> tuple[str, ...]:
        """:attr:`amqp_url` as the list of broker URLs it names, in order (one for a single
        broker). Log them through ``worker.consumer.connect.describe_urls``: each redacted."""
        return split_urls(self.amqp_url)

    @property
    def reply_prefixes(self) -> tuple[str, ...]:
        """:attr:`reply_to_prefixes` as a list; a plain string setting, so the environment
        variable is read as comma-separated text, not as JSON."""
        return tuple(p.strip() for p in self.reply_to_prefixes.split(",") if p.strip())
