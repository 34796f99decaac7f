"""Validating a server's candidate tree with its own ``dhcpd -t`` before anything goes live.

The candidates are staged next to the live files (``.<name>.<request id>.new``) with their
include statements untouched, because that is the text that will be renamed over the live
file. When an included file changed too, validating the staged main file alone would check
the *live* include; so a validation copy (``.check``) of each file on the include path is
written with its includes pointing at the staged copies, and that copy of the main file is
what ``validate_command`` runs on. dhcpd's messages are mapped back to the real file names.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from worker.change.journal import check_path, staged_path
from worker.change.ports import CommandResult, RemoteHost
from worker.change.snapshot import encode, includes_of
from worker.dhcpconf import parse_dhcpd_output, rewrite_includes
from worker.errors import CommandFailed, ValidationFailed
from worker.messages import Phase

#: How much of dhcpd's raw output an error carries (its banner is long, the error is at the end).
OUTPUT_TAIL = 4000


@dataclass(frozen=True)
class ValidationSetup:
    """What to write and what to run so ``dhcpd -t`` sees the whole candidate tree."""

    target: str  # the file validate_command runs on
    copies: dict[str, tuple[str, str]]  # live path -> (validation copy path, its text)
    path_map: dict[str, str]  # staged or copy path -> live path, for dhcpd's messages


def validation_setup(
    main: str, after: Mapping[str, str], changed: Collection[str], request_id: str, base: str
) -> ValidationSetup:
    """Pure: which validation copies a tree needs. A file needs one when a file it includes
    (directly or not) changed; a changed file with no such include is validated as staged."""
    includes = {path: includes_of(text, path, base) for path, text in after.items()}
    memo: dict[str, bool] = {}

    def affected(path: str, seen: frozenset[str] = frozenset()) -> bool:
        if path not in memo:
            children = [t for _, t in includes.get(path, []) if t in after and t not in seen]
            memo[path] = path in changed or any(affected(t, seen | {path}) for t in children)
        return memo[path]

    targets: dict[str, str] = {}
    copies: dict[str, tuple[str, str]] = {}

    def target(path: str) -> str:
        if path in targets:
            return targets[path]
        targets[path] = path  # provisional, guards against include loops
        mapping = {w: target(t) for w, t in includes.get(path, []) if affected(t) and t != path}
        if mapping:
            copy = check_path(path, request_id)
            copies[path] = (copy, rewrite_includes(after[path], mapping))
            targets[path] = copy
        else:
            targets[path] = staged_path(path, request_id) if path in changed else path
        return targets[path]

    main_target = target(main)
    path_map = {staged_path(p, request_id): p for p in changed}
    path_map.update({copy: p for p, (copy, _) in copies.items()})
    return ValidationSetup(target=main_target, copies=copies, path_map=path_map)


async def setup_for(
    host: RemoteHost, main: str, after: Mapping[str, str], changed: Collection[str], rid: str
) -> ValidationSetup:
    """:func:`validation_setup` off the event loop, like the plan's parse: it parses every
    file for its includes."""
    return await asyncio.to_thread(
        validation_setup, main, after, changed, rid, host.working_directory
    )


async def validate_tree(
    host: RemoteHost,
    main: str,
    after: Mapping[str, str],
    changed: Collection[str],
    request_id: str,
    temps: set[str] | None = None,
    setup: ValidationSetup | None = None,
) -> None:
    """Run the server's validate command on the staged tree; raise ``ValidationFailed`` with
    dhcpd's own message, file and line when it refuses. Validation copies are removed once
    dhcpd has run; on an exception they are left in ``temps`` for the caller's cleanup.
    ``setup``: :func:`setup_for` these arguments, if the caller worked it out meanwhile."""
    if setup is None:
        setup = await setup_for(host, main, after, changed, request_id)
    temps = temps if temps is not None else set()
    for live, (copy, text) in setup.copies.items():
        temps.add(copy)
        await host.write(copy, encode(text), like=live, in_place=True)
    result = await host.validate(setup.target)
    for copy, _ in setup.copies.values():
        await host.remove(copy)
        temps.discard(copy)
    if not result.ok:
        raise validation_error(host.name, result, setup.path_map)


#: The shell's exit statuses for a command it could not run (not executable, not found).
CANNOT_RUN = (126, 127)


def validation_error(
    server: str, result: CommandResult, path_map: Mapping[str, str]
) -> ValidationFailed | CommandFailed:
    """dhcpd's refusal as the result event's error: its first error, file, line, raw tail.
    A command the shell could not run (dhcpd missing) is no refusal: ``command_failed``,
    with the shell's own words."""
    output = "\n".join(part for part in (result.stdout, result.stderr) if part)
    # dhcpd exits 0 or 1; 126/127 are the shell's, whose words can read like one of dhcpd's
    # errors ("sh: line 1: ...: No such file or directory"), so they are not parsed as one.
    diagnosis = None if result.exit_status in CANNOT_RUN else parse_dhcpd_output(output, path_map)
    detail: dict[str, Any] = diagnosis.to_detail() if diagnosis else {}
    for staged, live in path_map.items():
        output = output.replace(staged, live)
    detail["exitStatus"] = result.exit_status
    detail["output"] = output[-OUTPUT_TAIL:]
    if result.exit_status in CANNOT_RUN:
        said = output.strip().splitlines()[-1] if output.strip() else "no output"
        return CommandFailed(
            f"the validate_command on {server} could not run (exit status "
            f"{result.exit_status}): {said}; is dhcpd installed where the inventory says?",
            server=server,
            phase=Phase.validate,
            detail=detail,
        )
    first = diagnosis.message if diagnosis else f"exit status {result.exit_status}"
    where = f" ({diagnosis.file} line {diagnosis.line})" if diagnosis else ""
    return ValidationFailed(
        f"dhcpd -t rejected the candidate on {server}{where}: {first}",
        server=server,
        phase=Phase.validate,
        detail=detail,
    )
