"""The ``dhcp-failover-worker`` command line (docs/contract.md §5).

Each command is a thin wrapper: parse flags, call one function of the layer that owns the work.
Heavy imports happen inside the commands so ``inspect`` and ``plan`` start fast.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

import click

from worker.cli_common import (
    AMQP_URL_KEY,
    console,
    deconfigure_action,
    modify_flags,
    settings_for,
)
from worker.failures import EXIT_UNAVAILABLE, OperatorError, debug_requested, explain
from worker.messages import MODIFY_COMMAND, REMOVE_COMMAND, Outcome
from worker.rollout.cli import rollout

#: ``publish --wait`` exit status by outcome; 124 when no event arrived in time.
EXIT_BY_OUTCOME = {
    Outcome.succeeded: 0,
    Outcome.rejected: 2,
    Outcome.failed: 3,
    Outcome.rolled_back: 4,
    Outcome.rollback_failed: 5,
}
EXIT_TIMEOUT = 124


class _Commands(click.Group):
    """Every command's unexpected exception becomes one line and a documented exit status
    (:mod:`worker.failures`); a traceback only in debug mode."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            raise _failure(ctx, exc) from None


def _failure(ctx: click.Context, exc: Exception) -> OperatorError:
    """``exc`` explained (traceback first in debug mode); the broker URL of the command, if
    any, is what a connection error is about."""
    import traceback

    if debug_requested(bool(ctx.find_root().params.get("debug"))):
        traceback.print_exception(exc)
    return explain(exc, ctx.meta.get(AMQP_URL_KEY))


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dhcp-failover-worker")
@click.option(
    "--debug",
    is_flag=True,
    help="Print the traceback of an error (also: DHCP_FAILOVER_LOG_LEVEL=debug).",
)
def main(debug: bool) -> None:
    """Change or remove ISC DHCP failover relationships on both peers, from RabbitMQ.

    Errors print one line on stderr; exit status 69 unreachable (broker, server), 70 internal
    error, 74 a local file unusable, 77 broker refused the login or vhost, 78 invalid
    inventory or setting.
    """


# -- the worker -------------------------------------------------------------------------------


@main.command()
@click.option(
    "--inventory",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Inventory TOML (default: $DHCP_FAILOVER_INVENTORY).",
)
@click.pass_context
def run(ctx: click.Context, inventory: Path | None) -> None:
    """Consume requests until SIGTERM, then finish the change in flight and stop.

    The inventory is checked first (every problem at once); then the worker waits up to
    DHCP_FAILOVER_STARTUP_TIMEOUT seconds for the broker.
    """
    from worker.logging import configure_logging, get_logger
    from worker.service import serve

    settings = settings_for(ctx)
    if inventory is not None:
        settings = settings.model_copy(update={"inventory": inventory})
    configure_logging(settings)

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    try:
        asyncio.run(_main())
    except Exception as exc:
        failure = _failure(ctx, exc)
        get_logger("worker.cli").error(
            "worker stopped on an error", error=failure.message, exit_status=failure.exit_code
        )
        raise failure from None


@main.command()
@click.option(
    "--inventory",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Inventory TOML to check.",
)
@click.option(
    "--connect",
    is_flag=True,
    help="Also reach every server: SSH and host key, the validate command on the live "
    "config, OMAPI.",
)
@click.pass_context
def check(ctx: click.Context, inventory: Path, connect: bool) -> None:
    """Check an inventory as `run` does at start; with --connect, each server too.

    Exit 0 when all is well, 78 for inventory problems (all listed), 69 when a server
    cannot be used (the table says how far each got).
    """
    from worker.transport.preflight import check_inventory

    checked = check_inventory(inventory)
    if not connect:
        click.echo(f"inventory {checked.source}: {len(checked.servers)} server(s), files ok")
        return
    from rich.table import Table

    from worker.check import check_servers
    from worker.logging import configure_logging

    settings = settings_for(ctx)
    configure_logging(settings, level="error")
    rows = asyncio.run(check_servers(checked, settings))
    table = Table("server", "reachable", "host key", "validate", "omapi")
    for row in rows:
        table.add_row(row.server, row.reachable, row.host_key, row.validate, row.omapi)
    console(stderr=False).print(table)
    problems = [p for row in rows for p in row.problems]
    for problem in problems:
        click.echo(f"problem: {problem}", err=True)
    if problems:
        raise OperatorError(
            f"{len(problems)} problem(s) on {sum(not r.ok for r in rows)} of {len(rows)} server(s)",
            EXIT_UNAVAILABLE,
        )


# -- publishing -------------------------------------------------------------------------------


def _publish(body: dict[str, Any], routing_key: str, wait: bool, timeout: float) -> None:
    from worker.consumer.client import publish_request

    settings = settings_for(click.get_current_context())
    request_id = body["requestId"]
    event = asyncio.run(
        publish_request(
            settings, body, routing_key, message_id=request_id, wait=timeout if wait else None
        )
    )
    if not wait:
        click.echo(json.dumps({"published": request_id, "routingKey": routing_key}))
        return
    if event is None:
        click.echo(
            f"Error: no result event for {request_id} within {timeout:g}s. The request is "
            "queued and a worker will still answer it on the event exchange: is a worker "
            "running? (--timeout waits longer)",
            err=True,
        )
        sys.exit(EXIT_TIMEOUT)
    click.echo(event.model_dump_json(indent=2))
    sys.exit(EXIT_BY_OUTCOME[event.data.outcome])


def _envelope(
    command: str, params: dict[str, Any], request_id: str | None, dry_run: bool, comment: str | None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "requestId": request_id or str(uuid.uuid4()),
        "command": command,
        "params": {k: v for k, v in params.items() if v is not None},
        "dryRun": dry_run,
    }
    if comment:
        body["comment"] = comment
    return body


_common = [
    click.option("--request-id", help="Idempotency key (default: a new UUID)."),
    click.option("--dry-run", is_flag=True, help="Validate and report diffs, change nothing."),
    click.option("--comment", help="Free text for the audit trail (e.g. a change ticket)."),
    click.option("--wait", is_flag=True, help="Wait for the result event and print it."),
    click.option(
        "--timeout",
        type=float,
        default=120.0,
        show_default=True,
        help="Seconds to wait with --wait.",
    ),
]


def _with_common(f: Any) -> Any:
    for option in reversed(_common):
        f = option(f)
    return f


@main.group()
def publish() -> None:
    """Publish a request (flags mirror Micetro's parameters)."""


@publish.command("modify")
@click.option("--name", required=True, help="Relationship name (Name).")
@click.option("--primary-server", required=True, help="Inventory name (PrimaryServer).")
@click.option("--secondary-server", required=True, help="Inventory name (SecondaryServer).")
@modify_flags
@_with_common
def publish_modify(
    name: str,
    primary_server: str,
    secondary_server: str,
    mclt: int | None,
    port: int | None,
    partner_port: int | None,
    load_balance_max_seconds: int | None,
    max_response_delay: int | None,
    max_unacked_updates: int | None,
    request_id: str | None,
    dry_run: bool,
    comment: str | None,
    wait: bool,
    timeout: float,
) -> None:
    """Publish a ModifyDHCPFailoverRelationship request."""
    params = {
        "Name": name,
        "PrimaryServer": primary_server,
        "SecondaryServer": secondary_server,
        "Mclt": mclt,
        "Port": port,
        "PartnerPort": partner_port,
        "LoadBalanceMaxSeconds": load_balance_max_seconds,
        "MaxResponseDelay": max_response_delay,
        "MaxUnackedUpdates": max_unacked_updates,
    }
    body = _envelope(MODIFY_COMMAND, params, request_id, dry_run, comment)
    _publish(body, "request.modify", wait, timeout)


@publish.command("remove")
@click.option("--server", required=True, help="Either peer's inventory name (Server).")
@click.option(
    "--name",
    "names",
    required=True,
    multiple=True,
    help="Relationship name (Name); repeat to remove several as one change.",
)
@deconfigure_action
@_with_common
def publish_remove(
    server: str,
    names: tuple[str, ...],
    deconfigure_action: str,
    request_id: str | None,
    dry_run: bool,
    comment: str | None,
    wait: bool,
    timeout: float,
) -> None:
    """Publish a RemoveDHCPFailoverRelationships request."""
    params = {
        "Server": server,
        "Name": names[0] if len(names) == 1 else list(names),
        "DeconfigureAction": deconfigure_action,
    }
    body = _envelope(REMOVE_COMMAND, params, request_id, dry_run, comment)
    _publish(body, "request.remove", wait, timeout)


# -- offline ----------------------------------------------------------------------------------


@main.command()
@click.argument("request", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--primary-config", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--secondary-config",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write primary.conf / secondary.conf candidates here (created if missing).",
)
def plan(request: Path, primary_config: Path, secondary_config: Path, out_dir: Path | None) -> None:
    """Run the worker's own dry run of a request on two local configs; print the diffs.

    Candidates are staged and validated beside the inputs (under the worker's hidden names,
    removed afterwards); the inputs are never modified. Exit 0 if it would apply, 2 if it
    would be rejected or fail (error JSON on stderr).
    """
    from worker.offline import run_plan

    sys.exit(run_plan(request, primary_config, secondary_config, out_dir))


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def inspect(file: Path) -> None:
    """Print the failover peers of a dhcpd.conf, and the scopes that use them, as JSON."""
    from worker.errors import WorkerError
    from worker.offline import inspect_config

    try:
        click.echo(json.dumps(inspect_config(file), indent=2))
    except WorkerError as exc:
        click.echo(exc.to_info().model_dump_json(), err=True)
        sys.exit(2)


@main.command()
@click.argument("directory", default="schemas", type=click.Path(file_okay=False, path_type=Path))
def schemas(directory: Path) -> None:
    """Write the JSON Schemas of requests and events to DIRECTORY (default: ./schemas)."""
    from worker.schemas import write

    for path in write(directory):
        click.echo(str(path))


@main.command()
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the demo hosts live (default: a temporary directory).",
)
def demo(workdir: Path | None) -> None:
    """End-to-end demo on local defaults: two local sshd 'DHCP hosts', the worker, RabbitMQ."""
    from worker.demo.run import run_demo

    sys.exit(asyncio.run(run_demo(workdir)))


main.add_command(rollout)  # worker/rollout/cli.py: fleet changes through the queue

if __name__ == "__main__":
    main()
