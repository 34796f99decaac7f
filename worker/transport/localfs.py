"""A ``RemoteHost`` over local files: what the offline ``plan`` runs the worker's code on.

``plan`` (README, "Command line") must judge a request exactly as the worker does, so it does
not re-implement reading, staging or validation: it runs the coordinator's own dry run
(:func:`worker.change.coordinator.preview`) on :class:`LocalFileHost`\\ s instead of SSH hosts.
Everything the dry run writes (candidates, validation copies) goes beside the input files
under the worker's hidden names and is removed by the worker's own clean-up.

Failure mapping, as in :mod:`worker.transport.ssh`: a missing file or directory an operation
needs -> ``RemoteFileNotFound``; any other refused file operation -> ``RemoteFileError``; a
file longer than ``MAX_READ_BYTES`` or one that is no regular file (a device or FIFO could
never end) -> ``RemoteFileTooLarge``; ``dhcpd -t`` past its timeout -> ``Ambiguous``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shlex
import signal
import stat
import time
import uuid
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

from worker.change.ports import MAX_READ_BYTES, CommandResult, Fleet, RemoteHost
from worker.change.running import RunningState, VerifyPolicy
from worker.errors import (
    Ambiguous,
    CommandFailed,
    LockTimeout,
    RemoteFileError,
    RemoteFileNotFound,
    RemoteFileTooLarge,
    UnknownServer,
)
from worker.messages import Phase

T = TypeVar("T")

#: How often a busy lock is tried again while waiting for it.
LOCK_POLL_SECONDS = 0.05
_CHUNK = 1024 * 1024


class LocalFileHost:
    """One config file on this machine, seen as a server.

    ``dhcpd``: the binary ``validate`` runs (``dhcpd -t -cf PATH``, like the inventory's
    default ``validate_command``); None when it is not installed: then ``validate`` accepts
    every candidate and the caller says the candidates were not validated.
    """

    def __init__(
        self,
        name: str,
        config_path: str,
        *,
        dhcpd: str | None,
        command_timeout: float = 60.0,
        working_directory: str | None = None,
    ) -> None:
        self._name = name
        self._config_path = os.path.abspath(config_path)
        self._dhcpd = dhcpd
        self._command_timeout = command_timeout
        self._cwd = working_directory or os.path.dirname(self._config_path)

    @property
    def name(self) -> str:
        return self._name

    @property
    def config_path(self) -> str:
        return self._config_path

    @property
    def working_directory(self) -> str:
        """The config's directory unless told otherwise: the worker's default rule, so a
        relative include resolves as dhcpd started there would resolve it."""
        return self._cwd

    @property
    def validates(self) -> bool:
        """Whether :meth:`validate` really runs dhcpd."""
        return self._dhcpd is not None

    def __repr__(self) -> str:
        return f"LocalFileHost({self._name!r}, {self._config_path!r})"

    # -- files ----------------------------------------------------------------------------------

    async def _io(self, what: str, op: Callable[[], T]) -> T:
        """Run a blocking file operation in a thread, its OS errors mapped."""
        try:
            return await asyncio.to_thread(op)
        except FileNotFoundError as e:
            raise RemoteFileNotFound(
                f"{self._name}: {what}: {_reason(e)}", server=self._name
            ) from e
        except OSError as e:
            raise RemoteFileError(f"{self._name}: {what}: {_reason(e)}", server=self._name) from e

    async def read(self, path: str) -> bytes | None:
        """The file's bytes, or None if missing. Only regular files are read: a device or
        FIFO (``include "/dev/zero";``) is refused before it is opened, so nothing blocks."""

        def op() -> bytes | None:
            try:
                self._refuse_irregular(path, os.stat(path))
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
            except FileNotFoundError:
                return None
            try:
                self._refuse_irregular(path, os.fstat(fd))  # swapped since the stat
                chunks: list[bytes] = []
                size = 0
                while chunk := os.read(fd, _CHUNK):
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > MAX_READ_BYTES:
                        raise self._too_large(path, f"is larger than {MAX_READ_BYTES} bytes")
                return b"".join(chunks)
            finally:
                os.close(fd)

        return await self._io(f"read {path}", op)

    def _refuse_irregular(self, path: str, st: os.stat_result) -> None:
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(21, "Is a directory", path)
        if not stat.S_ISREG(st.st_mode):
            raise self._too_large(path, "is not a regular file (a device, FIFO or socket)")
        if st.st_size > MAX_READ_BYTES:
            raise self._too_large(path, f"is larger than {MAX_READ_BYTES} bytes")

    def _too_large(self, path: str, why: str) -> RemoteFileTooLarge:
        return RemoteFileTooLarge(f"{self._name}: {path} {why}; not read", server=self._name)

    async def write(
        self, path: str, data: bytes, *, like: str | None = None, in_place: bool = False
    ) -> None:
        """Atomic: a hidden temp file beside ``path`` (``.<name>.<12 hex>.tmp``, the name the
        worker's clean-up knows), mode and owner of ``like`` (default 0644), fsync, rename.
        ``in_place`` (see :meth:`RemoteHost.write`): ``path`` itself, created, no rename; if it
        exists, the atomic way."""
        directory, base = os.path.split(path)
        temp = os.path.join(directory, f".{base}.{uuid.uuid4().hex[:12]}.tmp")

        def op() -> None:
            tmp = path if in_place else temp
            mode, owner = 0o644, None
            if like is not None:
                with contextlib.suppress(FileNotFoundError):
                    st = os.stat(like)
                    mode, owner = stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            try:
                fd = os.open(tmp, flags, 0o600)
            except FileExistsError:
                if tmp == temp:
                    raise
                tmp = temp
                fd = os.open(tmp, flags, 0o600)
            try:
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    current = os.fstat(fd)
                    if owner is not None and (current.st_uid, current.st_gid) != owner:
                        try:
                            os.fchown(fd, *owner)
                        except PermissionError as e:
                            raise PermissionError(
                                e.errno,
                                f"cannot give it the owner {owner[0]}:{owner[1]} of {like}; "
                                "run as the config's owner or root",
                            ) from e
                    os.fchmod(fd, mode)  # after the owner: a chown may clear set-id bits
                    os.fsync(fd)
                finally:
                    os.close(fd)
                if tmp != path:
                    os.rename(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            _fsync_directory(directory)

        await self._io(f"write {path}", op)

    async def replace(self, src: str, dst: str) -> None:
        await self._io(f"rename {src} over {dst}", lambda: os.rename(src, dst))

    async def link(self, src: str, dst: str) -> None:
        """A hard link to ``src`` itself (not what a symlink there points to), as SFTP's
        ``hardlink@openssh.com`` makes it."""
        await self._io(f"link {dst} to {src}", lambda: os.link(src, dst, follow_symlinks=False))

    async def remove(self, path: str) -> None:
        def op() -> None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

        await self._io(f"remove {path}", op)

    async def listdir(self, directory: str) -> list[str]:
        return await self._io(f"list {directory}", lambda: sorted(os.listdir(directory)))

    # -- commands -------------------------------------------------------------------------------

    async def validate(self, path: str) -> CommandResult:
        """``dhcpd -t -cf PATH`` in the working directory, bounded by ``command_timeout``."""
        if self._dhcpd is None:
            return CommandResult(f"dhcpd -t -cf {shlex.quote(path)} (not run: no dhcpd)", 0, "", "")
        argv = [self._dhcpd, "-t", "-cf", path]
        command = shlex.join(argv)
        started = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=self._cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # its own process group, killed whole on a timeout
            )
        except OSError as e:
            raise CommandFailed(
                f"{self._name}: cannot run `{command}` in {self._cwd}: {_reason(e)}",
                server=self._name,
                detail={"command": command},
            ) from e
        try:
            async with asyncio.timeout(self._command_timeout):
                out, err = await proc.communicate()
        except BaseException as e:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            if isinstance(e, TimeoutError):
                raise Ambiguous(
                    f"{self._name}: `{command}` did not finish within {self._command_timeout:g}s",
                    server=self._name,
                    detail={"command": command},
                ) from e
            raise
        status = proc.returncode
        return CommandResult(
            command=command,
            exit_status=status if status is not None and status >= 0 else None,  # None: a signal
            stdout=out.decode("utf-8", "replace"),
            stderr=err.decode("utf-8", "replace"),
            duration_ms=int((time.monotonic() - started) * 1000),
        )

    async def restart(self) -> CommandResult:
        """Never: a local file host stands in for a server only to plan on (``plan`` is a dry
        run, which restarts nothing); there is no dhcpd service here to restart."""
        raise CommandFailed(
            f"{self._name}: a local file host cannot restart dhcpd (offline plans never commit)",
            server=self._name,
            phase=Phase.commit,
        )

    # -- change lock ----------------------------------------------------------------------------

    def lock(self, timeout: float) -> _FileLock:
        """An exclusive ``flock`` on the config file itself, waited for up to ``timeout``.

        Two plans on the same input stage under the same hidden names (the request id names
        them), so they must not overlap. The lock is on the config rather than on a lock file
        beside it: a plan leaves no file beside its inputs, and two configs in one directory
        (the usual offline pair) get a lock each. It is bound to the file's inode, which a
        commit's rename would replace, so it excludes other plans only -- which is all a
        :class:`LocalFileHost` runs (:meth:`restart` refuses); it is not the worker's lock
        file and does not wait for a worker changing the same file (the dry run's recheck of
        the live bytes still catches that).
        """
        return _FileLock(self, timeout)

    def lock_lost(self) -> bool:
        """A local ``flock`` cannot vanish under a live process."""
        return False

    @property
    def omapi(self) -> VerifyPolicy | None:
        """Local files have no running dhcpd: nothing to verify (dry runs only)."""
        return None

    async def failover_state(self, relationship: str) -> RunningState | None:
        raise NotImplementedError("a LocalFileHost has no running dhcpd to ask")


class _FileLock:
    def __init__(self, host: LocalFileHost, timeout: float) -> None:
        self._host, self._timeout = host, timeout
        self._fd: int | None = None

    async def __aenter__(self) -> None:
        host = self._host
        path = host.config_path
        fd = await host._io(
            f"lock {path}", lambda: os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        )
        deadline = time.monotonic() + max(self._timeout, 0.0)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise LockTimeout(
                            f"{host.name}: change lock on {path} not obtained within "
                            f"{self._timeout:g}s (another plan of it is running)",
                            server=host.name,
                        ) from None
                    await asyncio.sleep(min(LOCK_POLL_SECONDS, left))
                except OSError as e:
                    raise RemoteFileError(
                        f"{host.name}: lock {path}: {_reason(e)}", server=host.name
                    ) from e
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor releases the flock


class LocalFleet:
    """Local file hosts as the inventory: only these names exist.

    ``partner``: the name :meth:`server_for_address` answers for *every* address. Offline
    there is no inventory to look a ``peer address`` up in: the two files given are the pair,
    so whatever address a peer block names, its partner is the other file.
    """

    def __init__(self, hosts: Iterable[LocalFileHost], *, partner: str | None = None) -> None:
        self._hosts = {h.name: h for h in hosts}
        self._partner = partner

    def host(self, name: str) -> LocalFileHost:
        try:
            return self._hosts[name]
        except KeyError:
            raise UnknownServer(
                f"server {name!r} is not one of the files given", server=name
            ) from None

    def server_for_address(self, address: str) -> str | None:
        return self._partner


def _fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable; best effort (some filesystems refuse)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _reason(error: OSError) -> str:
    return error.strerror or str(error) or type(error).__name__


if TYPE_CHECKING:

    def _implements_the_ports(host: LocalFileHost, fleet: LocalFleet) -> tuple[RemoteHost, Fleet]:
        """mypy proves here that the adapter satisfies the coordinator's protocols."""
        return host, fleet
