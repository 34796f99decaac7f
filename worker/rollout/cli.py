"""``dhcp-failover-worker rollout modify|remove|status`` (docs/contract.md §5).

Registered on the main command group by :mod:`worker.cli`; its error handling (one line, a
documented exit status) applies here too. Imports stay light until a command runs.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from worker.cli_common import console, deconfigure_action, modify_flags, settings_for

if TYPE_CHECKING:
    from worker.rollout.display import Display
    from worker.rollout.engine import Report
    from worker.rollout.spec import Change

T = TypeVar("T")

#: Exit status when the operator was not asked (no terminal) and gave no --yes, or said no.
EXIT_NOT_CONFIRMED = 1
#: ``rollout status``: nothing failed, but some pairs have no outcome yet.
EXIT_INCOMPLETE = 1


@click.group()
def rollout() -> None:
    """Change many pairs through the queue: preflight dry runs, then waves under a failure
    budget. Request ids are <rollout-id>.<relationship>.<primary>, so rerunning a rollout
    with the same --rollout-id resumes it."""


def _shared(f: Any) -> Any:
    options = [
        click.option(
            "--inventory",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="Inventory TOML whose servers' configs name the pairs "
            "(default: $DHCP_FAILOVER_INVENTORY).",
        ),
        click.option(
            "--relationship",
            "relationships",
            multiple=True,
            metavar="NAME",
            help="Only this relationship (repeatable).",
        ),
        click.option(
            "--server",
            "servers",
            multiple=True,
            metavar="GLOB",
            help="Only pairs with a peer matching this glob (repeatable).",
        ),
        click.option("--all", "all_pairs", is_flag=True, help="Every pair of the inventory."),
        click.option(
            "--waves",
            default="1,5%,100%",
            show_default=True,
            help="Wave sizes as Ansible's serial: per wave, a count or a percentage of all "
            "pairs; the last one repeats.",
        ),
        click.option(
            "--max-failures",
            type=click.IntRange(min=0),
            help="Failed pairs allowed over the whole rollout (default 0 without "
            "--max-failure-percent).",
        ),
        click.option(
            "--max-failure-percent",
            type=click.FloatRange(0, 100),
            help="Failed pairs allowed, as a percentage of all pairs (rounded down).",
        ),
        click.option(
            "--concurrency",
            type=click.IntRange(min=1),
            default=8,
            show_default=True,
            help="Pairs in flight at once.",
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=300.0,
            show_default=True,
            help="Seconds to wait for each pair's result event.",
        ),
        click.option(
            "--rollout-id",
            help="Names the rollout and its request ids (default: a new one); the same id "
            "resumes a rollout.",
        ),
        click.option(
            "--results",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Results file, JSON lines (default: ./rollout-<id>.jsonl).",
        ),
        click.option("--comment", help="Free text for the audit trail (e.g. a change ticket)."),
        click.option("--dry-run", is_flag=True, help="Only the preflight: change nothing."),
        click.option("--yes", is_flag=True, help="Go on after the preflight without asking."),
        click.option("--json", "as_json", is_flag=True, help="One JSON object per pair."),
    ]
    for option in reversed(options):
        f = option(f)
    return click.pass_context(f)


@rollout.command("modify")
@modify_flags
@_shared
def rollout_modify(
    ctx: click.Context,
    mclt: int | None,
    port: int | None,
    partner_port: int | None,
    load_balance_max_seconds: int | None,
    max_response_delay: int | None,
    max_unacked_updates: int | None,
    **options: Any,
) -> None:
    """Modify every selected pair (settings as `publish modify`)."""
    from worker.rollout.spec import Change

    settings = {
        "Mclt": mclt,
        "Port": port,
        "PartnerPort": partner_port,
        "LoadBalanceMaxSeconds": load_balance_max_seconds,
        "MaxResponseDelay": max_response_delay,
        "MaxUnackedUpdates": max_unacked_updates,
    }
    try:
        change = Change.modify(settings)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    _rollout(ctx, change, **options)


@rollout.command("remove")
@deconfigure_action
@_shared
def rollout_remove(ctx: click.Context, deconfigure_action: str, **options: Any) -> None:
    """Remove every selected relationship from both its peers."""
    from worker.rollout.spec import Change

    _rollout(ctx, Change.remove(deconfigure_action), **options)


@rollout.command("status")
@click.argument("rollout_id")
@click.option(
    "--results",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Results file (default: ./rollout-<id>.jsonl).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per pair.")
def rollout_status(rollout_id: str, results: Path | None, as_json: bool) -> None:
    """The outcomes of a rollout so far, from its results file.

    Exit 0 when every pair succeeded, the worst outcome's status (as `publish --wait`) when
    one did not, 1 when none failed but some are not done.
    """
    from worker.failures import EXIT_IOERR, OperatorError
    from worker.rollout.engine import Report
    from worker.rollout.results import (
        PENDING,
        default_results_path,
        exit_status,
        load_history,
        worst,
    )

    path = results or default_results_path(rollout_id)
    if not path.is_file():
        raise OperatorError(
            f"cannot use {path}: no results file of rollout {rollout_id} there (run status "
            "where the rollout ran, or give --results FILE)",
            EXIT_IOERR,
        )
    history = load_history(path, rollout_id)
    stopped = history.end.get("stopped") if history.end else None
    report = Report(rollout_id, path, history.status(), stopped, "")
    _output(report, as_json)
    found = worst(r.outcome for r in report.rows)
    status = exit_status(found) if found is not None else 0
    if status == 0 and any(r.outcome == PENDING for r in report.rows):
        status = EXIT_INCOMPLETE
    sys.exit(status)


def _rollout(
    ctx: click.Context,
    change: Change,
    *,
    inventory: Path | None,
    relationships: tuple[str, ...],
    servers: tuple[str, ...],
    all_pairs: bool,
    waves: str,
    max_failures: int | None,
    max_failure_percent: float | None,
    concurrency: int,
    timeout: float,
    rollout_id: str | None,
    results: Path | None,
    comment: str | None,
    dry_run: bool,
    yes: bool,
    as_json: bool,
) -> None:
    from worker.failures import OperatorError
    from worker.logging import configure_logging
    from worker.rollout.discovery import Selection
    from worker.rollout.display import Display, print_summary
    from worker.rollout.engine import execute, preflight_report, prepare
    from worker.rollout.ids import check_rollout_id, new_rollout_id
    from worker.rollout.results import default_results_path
    from worker.rollout.spec import RolloutSpec
    from worker.rollout.waves import Budget, parse_waves
    from worker.transport.inventory import load_inventory

    if all_pairs == bool(relationships or servers):
        raise click.UsageError("give --all, or --relationship / --server to choose pairs")
    try:
        rid = check_rollout_id(rollout_id) if rollout_id else new_rollout_id()
        wave_spec = parse_waves(waves)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    settings = settings_for(ctx)
    configure_logging(settings, level="error")
    spec = RolloutSpec(
        rollout_id=rid,
        change=change,
        selection=Selection(relationships, servers),
        waves=wave_spec,
        budget=Budget.of(max_failures, max_failure_percent),
        results=results or default_results_path(rid),
        concurrency=concurrency,
        timeout=timeout,
        comment=comment,
    )
    loaded = load_inventory(inventory or settings.inventory)
    err = console(stderr=True)
    display = Display(err)
    if not rollout_id:
        display.note(f"rollout id {rid} (rerun with --rollout-id {rid} to resume)")
    prepared = _until_interrupted(
        display, lambda stop: prepare(spec, settings, loaded, display, stop)
    )
    display.close()
    print_summary(err, prepared)
    if not prepared.pairs:
        raise OperatorError(
            f"no pair selected: no relationship with both peers in {loaded.source} "
            "matches (see --relationship, --server, --all)",
            2,
        )
    to_run = [p for p in prepared.plan if p not in prepared.done]
    if dry_run or prepared.interrupted:
        _finish(preflight_report(prepared), as_json)
    if to_run and not yes:
        if not sys.stdin.isatty():
            raise OperatorError(
                "not confirmed: stdin is not a terminal; after reading the preflight, rerun "
                f"with --yes (and --rollout-id {rid})",
                EXIT_NOT_CONFIRMED,
            )
        if not click.confirm(f"Change {len(to_run)} pair(s)?", err=True):
            raise OperatorError("not confirmed; nothing was changed", EXIT_NOT_CONFIRMED)
    report = _until_interrupted(display, lambda stop: execute(prepared, settings, display, stop))
    display.close()
    _finish(report, as_json)


def _until_interrupted(display: Display, step: Callable[[asyncio.Event], Awaitable[T]]) -> T:
    """Run ``step`` with Ctrl-C (or SIGTERM) setting its stop event; a second one cancels it,
    leaving the pairs in flight to the workers (exit 130)."""
    from worker.rollout.engine import EXIT_INTERRUPTED

    async def main() -> T:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def interrupt() -> None:
            if stop.is_set():
                task.cancel()
                return
            stop.set()
            display.note(
                "interrupted: waiting for the pairs in flight (again to leave them to the workers)"
            )

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, interrupt)
        try:
            return await step(stop)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        display.close()
        display.note(
            "interrupted: the pairs in flight are left to the workers; rerun with the same "
            "--rollout-id to collect their outcomes"
        )
        sys.exit(EXIT_INTERRUPTED)


def _finish(report: Report, as_json: bool) -> None:
    _output(report, as_json)
    sys.exit(report.exit_status())


def _output(report: Report, as_json: bool) -> None:
    from worker.rollout.display import print_counts, print_table

    if as_json:
        for row in report.rows:
            click.echo(json.dumps(row.to_json()))
        print_counts(console(stderr=True), report)
        return
    print_table(console(stderr=False), report, console(stderr=True))
