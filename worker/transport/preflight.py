"""Checks of an inventory's local files before the worker consumes anything (`run`, `check`).

Loading an inventory checks its text (syntax, fields, values). This checks what it points at
on this machine: every client key readable and a key asyncssh can load without a passphrase,
every known_hosts file readable and listing a key for its server's host and port, every OMAPI
secret file there and holding base64 (:meth:`Inventory.missing_files`). A problem here
would otherwise surface half-way through a change, so every one of them is reported at once,
each with file, server and field.
"""

from __future__ import annotations

from pathlib import Path

import asyncssh

from worker.transport.connection import known_hosts
from worker.transport.inventory import (
    Inventory,
    ServerEntry,
    inventory_problems,
    load_inventory,
)

Problem = tuple[str, str, str]  # server, field, message


def check_inventory(path: Path | str) -> Inventory:
    """Load ``path`` and check its local files; ``InventoryError`` lists every problem."""
    inventory = load_inventory(path)
    problems = file_problems(inventory)
    if problems:
        raise inventory_problems(inventory.source or path, problems)
    return inventory


def file_problems(inventory: Inventory) -> list[Problem]:
    """Every problem with the local files the inventory names: the missing ones
    (:meth:`Inventory.missing_files`), then, for those that exist, whether they can be read
    and used. Each file is read once, however many servers share it (a fleet's servers
    usually share one key and one known_hosts: read per server, 1,000 servers took 8 s)."""
    problems = inventory.missing_files()
    missing = {(server, field) for server, field, _ in problems}
    key_problems: dict[Path, str | None] = {}
    for name, entry in inventory.servers.items():
        for i, key in enumerate(entry.client_keys):
            if (name, f"client_keys.{i}") in missing:
                continue
            if key not in key_problems:
                key_problems[key] = _key_problem(key)
            if why := key_problems[key]:
                problems.append((name, f"client_keys.{i}", why))
        if (name, "known_hosts") not in missing and (why := _known_hosts_problem(entry)):
            problems.append((name, "known_hosts", why))
    order = {name: i for i, name in enumerate(inventory.servers)}
    return sorted(problems, key=lambda p: order[p[0]])


def _readable_problem(path: Path) -> str | None:
    try:
        with path.open("rb"):
            return None
    except FileNotFoundError:
        return f"file not found: {path}"
    except IsADirectoryError:
        return f"is a directory, not a file: {path}"
    except PermissionError:
        return f"not readable by this user: {path}"
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"


def _key_problem(path: Path) -> str | None:
    if (why := _readable_problem(path)) is not None:
        return why
    try:
        asyncssh.read_private_key(path)
    except asyncssh.KeyImportError as exc:
        return f"not a private key the worker can use ({exc}): {path}"
    return None


def _known_hosts_problem(entry: ServerEntry) -> str | None:
    path = entry.known_hosts
    if (why := _readable_problem(path)) is not None:
        return why
    try:
        known = known_hosts(path)  # parsed once per version of the file, as connections do
    except (ValueError, asyncssh.KeyImportError) as exc:
        return f"not a known_hosts file ({exc}): {path}"
    host_keys, ca_keys, *_ = known.match(entry.host, "", entry.port)
    if not host_keys and not ca_keys:
        listed = entry.host if entry.port == 22 else f"[{entry.host}]:{entry.port}"
        return (
            f"{path} lists no host key for {listed}: add it (ssh-keyscan -p {entry.port} "
            f"{entry.host} >> {path}, after checking the fingerprint)"
        )
    return None
