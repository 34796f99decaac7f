"""Reading a server's live config tree: the main dhcpd.conf and every file it includes.

Bytes are kept exactly as read: their sha256 is what a change compares before it writes, and
they are what a backup holds. Text for the engine is decoded with ``surrogateescape`` so any
byte (a Latin-1 comment, say) survives the round trip unchanged.
"""

from __future__ import annotations

import asyncio
import hashlib
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass

from worker.change.ports import MAX_READ_BYTES, RemoteHost
from worker.dhcpconf import include_paths
from worker.errors import ConfigError, RemoteFileTooLarge

ENCODING = "utf-8"
ERRORS = "surrogateescape"
#: dhcpd itself has no limit; a deeper chain is far more likely a loop or a mistake.
MAX_INCLUDE_DEPTH = 8


def decode(data: bytes) -> str:
    return data.decode(ENCODING, ERRORS)


def encode(text: str) -> bytes:
    return text.encode(ENCODING, ERRORS)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def resolve_include(written: str, base: str) -> str:
    """dhcpd opens a relative include from its working directory when it starts: ``base``
    (the host's ``working_directory``, where ``dhcpd -t`` runs as well)."""
    if posixpath.isabs(written):
        return written
    return posixpath.normpath(posixpath.join(base, written))


def includes_of(text: str, path: str, base: str) -> list[tuple[str, str]]:
    """``(as written, resolved path)`` for each include statement of one file."""
    return [(w, resolve_include(w, base)) for w in include_paths(text, path)]


@dataclass(frozen=True)
class Snapshot:
    """One server's config tree as read: main file first, then includes in discovery order."""

    server: str
    main: str
    raw: Mapping[str, bytes]
    base: str  # where relative includes were resolved: the host's working directory

    def texts(self) -> dict[str, str]:
        return {path: decode(data) for path, data in self.raw.items()}

    @property
    def main_sha256(self) -> str:
        return sha256_hex(self.raw[self.main])


async def read_snapshot(host: RemoteHost) -> Snapshot:
    """Read the main config and, level by level, the files it includes.

    A missing main file or include is a :class:`ConfigError` naming the file and who includes
    it: planning without a file could silently miss the pools that reference a peer.
    """
    main, base = host.config_path, host.working_directory
    raw: dict[str, bytes] = {}
    level: list[tuple[str, str | None]] = [(main, None)]  # (path, included from)
    depth = 0
    while level:
        if depth > MAX_INCLUDE_DEPTH:
            raise ConfigError(
                f"includes nested deeper than {MAX_INCLUDE_DEPTH} levels on {host.name}",
                file=level[0][1],
                server=host.name,
            )
        datas = await asyncio.gather(*(_read(host, path, parent) for path, parent in level))
        following: list[tuple[str, str | None]] = []
        for (path, parent), data in zip(level, datas, strict=True):
            if data is None:
                what = f"included file {path}" if parent else f"config file {path}"
                where = f" (included from {parent})" if parent else ""
                raise ConfigError(
                    f"{what} does not exist on {host.name}{where}",
                    file=parent or path,
                    server=host.name,
                )
            raw[path] = data
            for _, target in includes_of(decode(data), path, base):
                if target not in raw and all(target != p for p, _ in following):
                    following.append((target, path))
        level = [(p, parent) for p, parent in following if p not in raw]
        depth += 1
    return Snapshot(server=host.name, main=main, raw=raw, base=base)


async def _read(host: RemoteHost, path: str, parent: str | None) -> bytes | None:
    """One file of the tree; one too large to be a config is the config's mistake."""
    try:
        return await host.read(path)
    except RemoteFileTooLarge as exc:
        where = f" (included from {parent})" if parent else ""
        raise ConfigError(
            f"{path} on {host.name}{where} is larger than {MAX_READ_BYTES} bytes (or never "
            "ends, like a device); not a config the worker will read",
            file=parent or path,
            server=host.name,
            code="file_too_large",
        ) from exc
