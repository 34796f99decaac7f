"""The inventory (docs/contract.md §4): the only servers the worker will ever contact.

A TOML file with one ``[servers."NAME"]`` table per DHCP server. It is validated strictly at
load time -- unknown keys are errors, client keys and known_hosts must exist -- because a typo
found when a change is half-way through is far more expensive than one found at start-up.
Every error names the file, the server and the field.
"""

from __future__ import annotations

import ipaddress
import posixpath
import tomllib
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from worker.transport.omapi_entry import OmapiEntry, resolve_local, secret_problem

DEFAULT_VALIDATE_COMMAND = "dhcpd -t -cf {path}"
LOCK_FILE_NAME = ".dhcp-failover.lock"


class InventoryError(ValueError):
    """The inventory file is missing, not TOML, or invalid. Names file, server and field."""

    def __init__(
        self, file: Path | str, message: str, *, server: str | None = None, field: str | None = None
    ) -> None:
        self.file = str(file)
        self.server = server
        self.field = field
        where = [f"inventory {self.file}"]
        if server is not None:
            where.append(f"server {server!r}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{': '.join(where)}: {message}")


def _absolute_posix(value: str) -> str:
    if not value or "\0" in value or "\n" in value:
        raise ValueError("must be a non-empty path without NUL or newline characters")
    if not posixpath.isabs(value):
        raise ValueError(f"must be an absolute path on the server, not {value!r}")
    if value.endswith("/"):
        raise ValueError(f"must name a file, not a directory: {value!r}")
    return posixpath.normpath(value)


class ServerEntry(BaseModel):
    """One DHCP server: how to reach it and which commands manage its dhcpd."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(min_length=1, description="Address or DNS name sshd listens on.")
    port: int = Field(default=22, ge=1, le=65535)
    username: str = Field(min_length=1)
    client_keys: tuple[Path, ...] = Field(min_length=1, description="Private key files.")
    known_hosts: Path = Field(description="OpenSSH known_hosts file that must list the host key.")
    config_path: str = Field(description="Absolute path of the live dhcpd.conf on the server.")
    validate_command: str = Field(
        default=DEFAULT_VALIDATE_COMMAND,
        description="Checks a candidate; `{path}` becomes the shell-quoted candidate path.",
    )
    restart_command: str = Field(min_length=1)
    verify_command: str | None = Field(
        default=None, description="Run after a successful restart in the same exec."
    )
    addresses: tuple[str, ...] = Field(
        default=(), description="Other addresses of this server, as failover `peer address`."
    )
    lock_path: str | None = Field(
        default=None, description=f"Change-lock file; default <config dir>/{LOCK_FILE_NAME}."
    )
    working_directory: str | None = Field(
        default=None,
        description="dhcpd's working directory when it starts: a relative `include` is "
        "resolved against it, and validate_command runs in it; default: the config's "
        "directory.",
    )
    omapi: OmapiEntry | None = Field(
        default=None, description="How to read the running dhcpd; without it, no verify."
    )

    @field_validator("client_keys", "known_hosts", mode="after")
    @classmethod
    def _resolve_local_files(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, tuple):
            return tuple(resolve_local(p, info) for p in value)
        return resolve_local(value, info)

    @field_validator("config_path", mode="after")
    @classmethod
    def _config_path_absolute(cls, value: str) -> str:
        return _absolute_posix(value)

    @field_validator("lock_path", mode="after")
    @classmethod
    def _lock_path_absolute(cls, value: str | None) -> str | None:
        return None if value is None else _absolute_posix(value)

    @field_validator("working_directory", mode="after")
    @classmethod
    def _working_directory_absolute(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value or "\0" in value or "\n" in value or not posixpath.isabs(value):
            raise ValueError(f"must be an absolute directory on the server, not {value!r}")
        return posixpath.normpath(value)

    @model_validator(mode="after")
    def _lock_is_not_the_config(self) -> ServerEntry:
        """A commit renames the candidate over the config: a lock on that name would move
        to a new inode mid-change, and two workers could then both hold "the" lock."""
        if self.effective_lock_path == self.config_path:
            raise ValueError(
                "lock_path must not be config_path (the commit's rename would replace the "
                "lock file); omit it or name a file of its own"
            )
        return self

    @field_validator("validate_command", mode="after")
    @classmethod
    def _validate_takes_path(cls, value: str) -> str:
        if "{path}" not in value:
            raise ValueError("must contain {path}, where the candidate file is substituted")
        return value

    @field_validator("verify_command", mode="after")
    @classmethod
    def _verify_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be blank (omit it instead)")
        return value

    @property
    def effective_lock_path(self) -> str:
        return self.lock_path or posixpath.join(posixpath.dirname(self.config_path), LOCK_FILE_NAME)

    @property
    def effective_working_directory(self) -> str:
        return self.working_directory or posixpath.dirname(self.config_path)


class Inventory(BaseModel):
    """Servers by name. Only these are ever contacted; any other name is ``UnknownServer``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    servers: dict[str, ServerEntry] = Field(min_length=1)
    _source: Path | None = PrivateAttr(default=None)

    @field_validator("servers", mode="before")
    @classmethod
    def _names_are_plain(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            for name in value:
                if not isinstance(name, str) or not name or any(c.isspace() for c in name):
                    raise ValueError(f"server name {name!r} must be non-empty without whitespace")
        return value

    @model_validator(mode="after")
    def _addresses_unambiguous(self) -> Inventory:
        """Two servers claiming one address would make partner lookup a coin toss.

        Hosts may be shared (several sshds on one address, different ports); names and
        ``addresses`` may not, and no ``addresses`` entry may be another server's host.
        """
        owner: dict[str, str] = {}
        for name, entry in self.servers.items():
            for address in {_normalise(a) for a in (name, *entry.addresses)}:
                other = owner.setdefault(address, name)
                if other != name:
                    raise ValueError(f"address {address} is claimed by both {other!r} and {name!r}")
        hosts: dict[str, list[str]] = {}  # by host, not pairwise: O(servers), not O(servers²)
        for name, entry in self.servers.items():
            hosts.setdefault(_normalise(entry.host), []).append(name)
        order = {name: i for i, name in enumerate(self.servers)}
        for name, entry in self.servers.items():
            others = {o for a in entry.addresses for o in hosts.get(_normalise(a), ()) if o != name}
            if others:
                other = min(others, key=order.__getitem__)
                host = self.servers[other].host
                raise ValueError(f"{name!r} lists {host} in addresses; it is {other!r}'s host")
        return self

    @property
    def source(self) -> Path | None:
        """The file this inventory was loaded from, if any."""
        return self._source

    def server(self, name: str) -> ServerEntry | None:
        return self.servers.get(name)

    def check_files(self) -> None:
        """Raise :class:`InventoryError` unless every file of :meth:`missing_files` exists.

        Separate from loading because an inventory written for another machine (a container's
        mounts, say) is still worth validating; the SSH fleet checks before it connects, and
        ``run`` / ``check`` check more (:mod:`worker.transport.preflight`).
        """
        problems = self.missing_files()
        if problems:
            raise _combine(self._source or "<inventory>", problems)

    def missing_files(self) -> list[tuple[str, str, str]]:
        """(server, field, message) for every client key, known_hosts and OMAPI key secret
        file that does not exist (a secret file must also hold base64)."""
        problems: list[tuple[str, str, str]] = []
        for name, entry in self.servers.items():
            for i, key in enumerate(entry.client_keys):
                if not key.is_file():
                    problems.append((name, f"client_keys.{i}", f"file not found: {key}"))
            if not entry.known_hosts.is_file():
                problems.append((name, "known_hosts", f"file not found: {entry.known_hosts}"))
            problem = secret_problem(entry.omapi)
            if problem is not None:
                problems.append((name, "omapi.key_secret_file", problem))
        return problems

    def server_for_address(self, address: str) -> str | None:
        """The inventory name whose name, ``addresses`` entry or host is ``address``.

        A host shared by several servers (different ports) identifies none of them.
        """
        named, by_host = self._address_index
        key = _normalise(address)
        return named.get(key) or by_host.get(key)

    @cached_property
    def _address_index(self) -> tuple[dict[str, str], dict[str, str]]:
        """Normalised name and ``addresses`` -> server (the first server wins, as in the
        inventory's order), and host -> server where only one server has that host: built
        once, as a rollout's discovery asks for every peer address of every server."""
        named: dict[str, str] = {}
        for name, entry in self.servers.items():
            for key in (name, *entry.addresses):
                named.setdefault(_normalise(key), name)
        hosts: dict[str, list[str]] = {}
        for name, entry in self.servers.items():
            hosts.setdefault(_normalise(entry.host), []).append(name)
        return named, {h: names[0] for h, names in hosts.items() if len(names) == 1}


def _normalise(address: str) -> str:
    text = address.strip()
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        return text.lower().rstrip(".")


def load_inventory(path: Path | str, *, check_files: bool = False) -> Inventory:
    """Read and validate an inventory file; raise :class:`InventoryError` on any problem.

    ``check_files=True`` also requires the client keys and known_hosts files to exist here
    (:class:`~worker.transport.ssh.SshFleet` always checks that before connecting).
    """
    file = Path(path).expanduser().resolve()
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InventoryError(file, "file not found") from None
    except OSError as e:
        raise InventoryError(file, f"cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise InventoryError(file, f"not UTF-8 text: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise InventoryError(file, f"not valid TOML: {e}") from None
    return parse_inventory(raw, file, check_files=check_files)


def parse_inventory(
    raw: Mapping[str, Any], file: Path | str, *, check_files: bool = False
) -> Inventory:
    """Validate already-parsed TOML data; ``file`` names it in errors and anchors relative paths."""
    file = Path(file)
    try:
        inventory = Inventory.model_validate(raw, context={"base_dir": file.parent})
    except ValidationError as e:
        raise _inventory_error(file, e) from None
    inventory._source = file
    if check_files:
        inventory.check_files()
    return inventory


def _inventory_error(file: Path, error: ValidationError) -> InventoryError:
    """Turn pydantic's locations into file / server / field; list every problem."""
    problems: list[tuple[str | None, str | None, str]] = []
    for item in error.errors(include_url=False):
        loc = [str(p) for p in item["loc"]]
        server = field = None
        if len(loc) >= 2 and loc[0] == "servers":
            server = loc[1]
            field = ".".join(loc[2:]) or None
        elif loc:
            field = ".".join(loc)
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field (not allowed)"
        problems.append((server, field, message))
    return _combine(file, problems)


def _combine(
    file: Path | str, problems: Sequence[tuple[str | None, str | None, str]]
) -> InventoryError:
    server, field, message = problems[0]
    if len(problems) > 1:
        more = "; ".join(
            f"{s + ': ' if s else ''}{f + ': ' if f else ''}{m}" for s, f, m in problems[1:]
        )
        message = f"{message} (and {len(problems) - 1} more: {more})"
    return InventoryError(file, message, server=server, field=field)


def inventory_problems(
    file: Path | str, problems: Sequence[tuple[str | None, str | None, str]]
) -> InventoryError:
    """One :class:`InventoryError` for several (server, field, message) problems; the first
    names the error, the others follow in its message."""
    return _combine(file, problems)
