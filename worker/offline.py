"""Offline commands (README, "Command line"): ``plan`` a request on local files, ``inspect`` one.

Nothing here reads, plans or validates on its own. ``plan`` runs the worker's dry run
(:func:`worker.change.coordinator.preview`: the same tree reader, pair checks, staging and
``dhcpd -t`` validation) on :class:`~worker.transport.localfs.LocalFileHost`\\ s, so "would
apply" is the worker's own judgement. The dry run stages its candidates and validation copies
beside the inputs under the worker's hidden names and removes them; the inputs themselves are
only read. ``inspect`` reads with the same :func:`~worker.change.snapshot.read_snapshot`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import structlog
from pydantic import ValidationError

from worker.change.coordinator import preview
from worker.change.model import ServerChange
from worker.change.plan import ServerPlan
from worker.change.snapshot import encode, read_snapshot
from worker.dhcpconf import ConfigSet
from worker.messages import (
    ErrorInfo,
    ModifyRequest,
    Outcome,
    Phase,
    RemoveRequest,
    WarningInfo,
    parse_request,
)
from worker.transport.localfs import LocalFileHost, LocalFleet

EXIT_OK = 0
EXIT_REJECTED = 2

NOT_VALIDATED = "dhcpd not found: candidates were not validated"


def find_dhcpd() -> str | None:
    """dhcpd on PATH, or Debian's /usr/sbin/dhcpd (sbin is often not on a user's PATH)."""
    return shutil.which("dhcpd") or (
        "/usr/sbin/dhcpd" if os.access("/usr/sbin/dhcpd", os.X_OK) else None
    )


def local_pair(
    request: ModifyRequest | RemoveRequest, primary: Path, secondary: Path, dhcpd: str | None
) -> tuple[LocalFleet, dict[str, str]]:
    """The two files as the worker's fleet, and each server's label (``primary`` for the
    ``--primary-config`` file, ``secondary`` for the other).

    A modify names both servers: ``PrimaryServer`` holds ``--primary-config``,
    ``SecondaryServer`` ``--secondary-config``. A remove names one: ``Server`` holds
    ``--primary-config`` and its partner, named by the ``--secondary-config`` path, is the
    answer to every ``peer address``. So, as before, offline the two files *are* the pair and
    any ``Server`` name does (it only names the first file's host); which file is the failover
    primary the worker reads from their peer blocks, as on servers.
    """
    if isinstance(request, ModifyRequest):
        names = (request.params.primary_server, request.params.secondary_server)
        partner = None
    else:
        names = (request.params.server, str(secondary))
        partner = names[1]
    hosts = [
        LocalFileHost(name, str(path), dhcpd=dhcpd)
        for name, path in zip(names, (primary, secondary), strict=True)
    ]
    labels = dict(zip(names, ("primary", "secondary"), strict=True))
    return LocalFleet(hosts, partner=partner), labels


def full_diff(change: ServerChange) -> str:
    """Every changed file of a server, whole: the event's diff is redacted and capped, this
    is not. The plan's own diff (from its edits); rebuilt from the texts the change read and
    would write if it carries no plan (then each file is diffed as one region)."""
    if change.plan is not None:
        return change.plan.diff()
    assert change.snapshot is not None  # a planned change has its live tree
    plan = ServerPlan(
        server=change.name,
        role=change.report.role,
        main=change.snapshot.main,
        before=change.snapshot.texts(),
        after=dict(change.after_texts),
    )
    return plan.diff()


def candidate_names(
    changes: Sequence[ServerChange], labels: Mapping[str, str]
) -> dict[tuple[str, str], str]:
    """(server, live path) -> file name in the output directory, for every changed file: the
    main file as ``<label>.conf``, an include under its own name (label-prefixed on a clash)."""
    names: dict[tuple[str, str], str] = {}
    taken: set[str] = set()
    for change in sorted(changes, key=lambda c: labels[c.name] != "primary"):
        label = labels[change.name]
        changed = {f.path for f in change.files}
        for path in (p for p in change.after_texts if p in changed):
            if path == change.main:
                name = f"{label}.conf"
            else:
                name = os.path.basename(path)
                if name in taken or name in {"primary.conf", "secondary.conf"}:
                    name = f"{label}.{name}"
            taken.add(name)
            names[(change.name, path)] = name
    return names


def run_plan(request_file: Path, primary: Path, secondary: Path, out_dir: Path | None) -> int:
    """The ``plan`` command; returns the exit status. Inputs are only ever read."""
    try:
        request = parse_request(request_file.read_bytes())
    except ValidationError as exc:
        return _reject(
            ErrorInfo(
                code="invalid_request",
                message=f"{request_file}: request does not match the schema",
                phase=Phase.validate,
                detail=json.loads(exc.json(include_url=False, include_input=False)),
            )
        )
    if primary.exists() and secondary.exists() and primary.samefile(secondary):
        return _reject(
            ErrorInfo(
                code="invalid_request",
                message=f"{primary} is given as both configs; a pair is two files",
                phase=Phase.validate,
            )
        )
    dhcpd = find_dhcpd()
    fleet, labels = local_pair(request, primary, secondary, dhcpd)
    request_id = request.request_id or f"plan-{uuid.uuid4().hex[:12]}"
    with _quiet_logs():
        planned = asyncio.run(preview(request, request_id, fleet))
    result = planned.result
    if result.outcome is not Outcome.succeeded:
        error = result.error or ErrorInfo(
            code="internal_error", message=f"outcome {result.outcome.value}", phase=Phase.plan
        )
        return _reject(error)
    return _report(planned.changes, result.warnings, labels, dhcpd is not None, out_dir)


def _report(
    planned: Sequence[ServerChange],
    warnings: Sequence[WarningInfo],
    labels: Mapping[str, str],
    validated: bool,
    out_dir: Path | None,
) -> int:
    """A plan that would apply: warnings on stderr, full diffs on stdout, candidates to
    ``out_dir``."""
    changes = [c for c in planned if c.changed]
    names = candidate_names(changes, labels)
    if out_dir is not None and (clash := _overwritten_input(planned, names, out_dir)):
        return _reject(
            ErrorInfo(
                code="invalid_request",
                message=f"--out {out_dir}: writing the candidates there would overwrite the "
                f"input {clash}; choose another directory",
                phase=Phase.validate,
            )
        )
    if changes and not validated:
        click.echo(f"warning: {NOT_VALIDATED}", err=True)
    for warning in warnings:
        click.echo(f"warning: {warning.message}", err=True)
    for change in changes:
        click.echo(encode(full_diff(change)), nl=False)  # the files' own bytes
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        after = {(c.name, f.path): f.after for c in changes for f in c.files}
        for key, name in names.items():
            data = after[key]
            assert data is not None  # a planned file always has its candidate
            (out_dir / name).write_bytes(data)
    return EXIT_OK


def _overwritten_input(
    changes: Sequence[ServerChange], names: Mapping[tuple[str, str], str], out_dir: Path
) -> str | None:
    """An input file (of either tree) that a candidate written to ``out_dir`` would replace."""
    inputs = {os.path.realpath(p): p for c in changes if c.snapshot for p in c.snapshot.raw}
    for name in names.values():
        if (real := os.path.realpath(out_dir / name)) in inputs:
            return inputs[real]
    return None


def _reject(info: ErrorInfo) -> int:
    click.echo(info.model_dump_json(), err=True)
    return EXIT_REJECTED


@contextmanager
def _quiet_logs() -> Iterator[None]:
    """The coordinator's log lines would land among the diffs (an unconfigured structlog
    prints to stdout); the outcome is reported on stderr instead. Restored afterwards."""
    configured, previous = structlog.is_configured(), structlog.get_config()
    structlog.configure(
        processors=[],
        wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL),
        logger_factory=structlog.ReturnLoggerFactory(),  # prints nothing
        cache_logger_on_first_use=False,
    )
    try:
        yield
    finally:
        if configured:
            structlog.configure(**previous)
        else:
            structlog.reset_defaults()


def inspect_config(path: Path) -> dict[str, Any]:
    """The failover peers of a config (and its includes) as plain JSON-able data. Read as the
    worker reads a server's tree: a missing or too deeply nested include is a ``ConfigError``."""
    host = LocalFileHost("localhost", str(path), dhcpd=None)
    snapshot = asyncio.run(read_snapshot(host))
    cs = ConfigSet.parse(snapshot.texts(), snapshot.main, snapshot.base)
    peers = []
    for peer in cs.peers().values():
        peers.append(
            {
                "name": peer.name,
                "role": peer.role,
                "roleDeclared": peer.role_declared,
                "parameters": dict(peer.params),
                "file": peer.file,
                "line": peer.line,
                "scopes": [
                    {"kind": s.kind, "label": s.label, "file": s.file, "line": s.line}
                    for s in peer.pools
                ],
            }
        )
    return {"file": str(path), "peers": peers, "warnings": []}
