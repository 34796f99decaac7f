"""The file operations of :class:`~worker.transport.ssh.SshHost`: SFTP requests on the pooled
connection's one session.

Here because these steps share one retry rule and one failure mapping (that of
:mod:`worker.transport.ssh`), which nothing else uses: a read is retried once on a fresh
connection, a mutating step only if it was surely never sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import uuid
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

import asyncssh

from worker.change.aio import retrieve
from worker.change.ports import MAX_READ_BYTES
from worker.errors import (
    Ambiguous,
    RemoteFileError,
    RemoteFileNotFound,
    RemoteFileTooLarge,
    Unreachable,
)
from worker.transport.connection import _CONNECTION_ERRORS, ServerConnection, _Gone

T = TypeVar("T")


class SftpFiles(ServerConnection):
    """Read, write (keeping owner and mode), replace, link and remove over SFTP."""

    async def _sftp_call(
        self,
        what: str,
        op: Callable[[asyncssh.SFTPClient], Awaitable[T]],
        *,
        mutating: bool,
        where: str | None = None,
    ) -> T:
        """Run one SFTP step with the timeout and the failure mapping of
        :mod:`worker.transport.ssh`.

        A read on a connection that turns out dead is retried once on a fresh one; a mutating
        step is retried only if the connection was already known dead before it was sent.
        """
        for attempt in (1, 2):  # a plain loop: tenacity's machinery cost more than the request
            try:
                return await self._sftp_once(what, op, mutating=mutating, where=where)
            except _Gone:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _sftp_once(
        self,
        what: str,
        op: Callable[[asyncssh.SFTPClient], Awaitable[T]],
        *,
        mutating: bool,
        where: str | None = None,
    ) -> T:
        self._check_lock()
        sftp = await self._sftp_client()
        conn = self._conn
        try:
            with self._writing() if mutating else contextlib.nullcontext():
                async with asyncio.timeout(self._options.command_timeout):
                    return await op(sftp)
        except asyncssh.SFTPNoSuchFile as e:
            raise RemoteFileNotFound(f"{self._name}: {what}: {e.reason}", server=self._name) from e
        except (asyncssh.SFTPConnectionLost, asyncssh.SFTPNoConnection) as e:
            self._lost(what, e, conn, mutating=mutating)
        except asyncssh.SFTPFailure as e:
            cause = await _failure_cause(sftp, where) if mutating and where else ""
            raise RemoteFileError(
                f"{self._name}: {what}: {e.reason}{cause}", server=self._name
            ) from e
        except asyncssh.SFTPError as e:
            raise RemoteFileError(f"{self._name}: {what}: {e.reason}", server=self._name) from e
        except TimeoutError as e:
            self._reset_sftp()
            cls = Ambiguous if mutating else Unreachable
            raise cls(
                f"{self._name}: {what} got no answer within {self._options.command_timeout:g}s",
                server=self._name,
            ) from e
        except _CONNECTION_ERRORS as e:
            self._lost(what, e, conn, mutating=mutating)

    def _lost(
        self,
        what: str,
        error: BaseException,
        conn: asyncssh.SSHClientConnection | None,
        *,
        mutating: bool,
    ) -> NoReturn:
        """The connection broke under a step: retry reads, call writes ambiguous."""
        self._forget(conn)
        self._reset_sftp()
        if not mutating:
            raise _Gone(str(error)) from error
        raise Ambiguous(
            f"{self._name}: connection lost during {what}; it may or may not have happened",
            server=self._name,
        ) from error

    async def read(self, path: str) -> bytes | None:
        async def op(sftp: asyncssh.SFTPClient) -> bytes | None:
            # No fstat for the size: one read of the most the server sends at once. SFTP
            # guarantees a disk file's read returns the length asked for or up to its end,
            # so a shorter answer is the end: open, read, close (a longer file reads on).
            # The close is not waited for (a read-only handle: nothing can fail that matters).
            block = max(sftp.limits.max_read_len, 1)
            try:
                f = await sftp.open(path, "rb", block_size=0)
            except asyncssh.SFTPNoSuchFile:
                return None
            try:
                chunks: list[bytes] = []
                size = 0
                while True:
                    chunk: bytes = await f.read(block)
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > MAX_READ_BYTES:  # a huge file, or a device that never ends
                        raise RemoteFileTooLarge(
                            f"{self._name}: {path} is larger than {MAX_READ_BYTES} bytes; not read",
                            server=self._name,
                        )
                    if len(chunk) < block:
                        return b"".join(chunks)
            finally:
                _in_background(f.close())

        return await self._reads(f"read {path}", op)

    async def _reads(self, what: str, op: Callable[[asyncssh.SFTPClient], Awaitable[T]]) -> T:
        try:
            return await self._sftp_call(what, op, mutating=False)
        except _Gone as e:
            raise Unreachable(
                f"{self._name}: connection lost twice during {what}", server=self._name
            ) from e

    async def write(
        self, path: str, data: bytes, *, like: str | None = None, in_place: bool = False
    ) -> None:
        """Write via a hidden temp file renamed over ``path``: never a half-written ``path``.

        The temp file is ``.<name>.<12 hex>.tmp`` beside ``path``; it is removed on any error,
        but a connection cut mid-write can leave one behind for a later cleanup to find.
        ``in_place`` (see :meth:`RemoteHost.write`): ``path`` itself, created, no rename; if it
        exists (the open fails), the atomic way.
        """
        directory, base = posixpath.split(path)
        temp = posixpath.join(directory, f".{base}.{uuid.uuid4().hex[:12]}.tmp")
        tmp = path if in_place else temp

        async def like_attrs(sftp: asyncssh.SFTPClient) -> tuple[int, tuple[int, int] | None]:
            mode, owner = 0o644, None
            if like is not None:
                with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                    attrs = await sftp.stat(like)
                    if attrs.permissions is not None:
                        mode = attrs.permissions & 0o7777
                    if attrs.uid is not None and attrs.gid is not None:
                        owner = (attrs.uid, attrs.gid)
            return mode, owner

        async def op(sftp: asyncssh.SFTPClient) -> None:
            nonlocal tmp
            # Three round trips: open (the stat of ``like`` beside it); then data, owner and
            # mode, fsync and close sent together (an SFTP server handles one handle's
            # requests in order); the rename only once all of them succeeded. In place: two.
            attrs = asyncio.ensure_future(like_attrs(sftp))
            # Data larger than one request is written first (asyncssh splits it into requests
            # in flight together, sent from tasks of its own: not in order with the close).
            big = len(data) > max(sftp.limits.max_write_len, 1)
            try:
                new = asyncssh.SFTPAttrs(permissions=0o600)
                try:
                    f = await sftp.open(tmp, "xb", new, block_size=-1 if big else 0)
                except asyncssh.SFTPError:
                    if tmp == temp:
                        raise
                    tmp = temp  # there already (SFTP v3 does not say why): the atomic way
                    f = await sftp.open(tmp, "xb", new, block_size=-1 if big else 0)
                try:
                    mode, owner = await attrs
                except BaseException:
                    await asyncio.gather(f.close(), return_exceptions=True)
                    raise
                wrote = await _outcome(f.write(data, 0)) if big else None
                # A chown may clear set-id bits: with those, owner and mode go one by one.
                at_once = owner is None or not mode & 0o6000
                attributes = asyncssh.SFTPAttrs(
                    uid=owner[0] if owner else None,
                    gid=owner[1] if owner else None,
                    permissions=mode,
                )
                first, set_at_once, synced, closed = await asyncio.gather(
                    _nothing() if big else f.write(data, 0),
                    f.setstat(attributes) if at_once else _nothing(),
                    f.fsync(),
                    f.close(),
                    return_exceptions=True,
                )
                if isinstance(synced, asyncssh.SFTPOpUnsupported):
                    synced = None  # a server without fsync@openssh.com: close is all there is
                for outcome in (wrote if big else first, synced, closed):
                    if isinstance(outcome, BaseException):
                        raise outcome
                if isinstance(set_at_once, BaseException) and not isinstance(
                    set_at_once, asyncssh.SFTPError
                ):
                    raise set_at_once
                if not at_once or set_at_once is not None:  # not tried, or refused
                    await self._set_owner_and_mode(sftp, tmp, owner, mode, path, like)
                if tmp != path:
                    await sftp.posix_rename(tmp, path)
            except BaseException:
                attrs.add_done_callback(retrieve)
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5):
                        await sftp.remove(tmp)
                raise

        await self._sftp_call(f"write {path}", op, mutating=True, where=path)

    async def _set_owner_and_mode(
        self,
        sftp: asyncssh.SFTPClient,
        tmp: str,
        owner: tuple[int, int] | None,
        mode: int,
        path: str,
        like: str | None,
    ) -> None:
        """Owner and mode one by one, when setting them at once was refused: a non-root
        account may not chown, which is fine only if the owner already matches; set-id bits
        are set after the owner, as a chown may clear them."""
        if owner is not None:
            try:
                await sftp.chown(tmp, *owner)
            except asyncssh.SFTPError as e:
                current = await sftp.stat(tmp)
                if (current.uid, current.gid) != owner:
                    raise RemoteFileError(
                        f"{self._name}: cannot give {path} the owner {owner[0]}:{owner[1]} of "
                        f"{like} ({e.reason}); the account must own the config or be root",
                        server=self._name,
                    ) from e
        await sftp.chmod(tmp, mode)

    async def replace(self, src: str, dst: str) -> None:
        await self._sftp_call(
            f"rename {src} over {dst}",
            lambda sftp: sftp.posix_rename(src, dst),
            mutating=True,
        )

    async def link(self, src: str, dst: str) -> None:
        """A hard link over SFTP (``hardlink@openssh.com``): one request, no data copied."""
        await self._sftp_call(
            f"link {dst} to {src}", lambda sftp: sftp.link(src, dst), mutating=True
        )

    async def remove(self, path: str) -> None:
        async def op(sftp: asyncssh.SFTPClient) -> None:
            with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                await sftp.remove(path)

        await self._sftp_call(f"remove {path}", op, mutating=True)


# -- helpers ------------------------------------------------------------------------------------

_BACKGROUND: set[asyncio.Future[None]] = set()


def _in_background(step: Awaitable[None]) -> None:
    """Send a request whose answer nobody needs; kept referenced until it is in."""
    task = asyncio.ensure_future(step)
    _BACKGROUND.add(task)
    task.add_done_callback(_forget_background)


def _forget_background(task: asyncio.Future[None]) -> None:
    _BACKGROUND.discard(task)
    if not task.cancelled():
        task.exception()


async def _outcome(step: Awaitable[object]) -> object:
    """What ``step`` returned or raised (raised later, once the handle is closed)."""
    try:
        return await step
    except Exception as e:
        return e


async def _nothing() -> None:
    """A step already taken, or one taken afterwards on its own."""


#: Free space below which a refused write is put down to a full file system.
_NEARLY_FULL = 64 * 1024
_ST_RDONLY = 1


async def _failure_cause(sftp: asyncssh.SFTPClient, path: str) -> str:
    """OpenSSH's sftp-server answers ENOSPC and EROFS with a bare "Failure": say which it
    likely was, from the file system's figures (``statvfs@openssh.com``); "" when unknown."""
    directory = posixpath.dirname(path) or "/"
    try:
        async with asyncio.timeout(5):
            vfs = await sftp.statvfs(directory)
    except (asyncssh.Error, OSError, TimeoutError):
        return ""
    if vfs.flags & _ST_RDONLY:
        return f" (the file system of {directory} is read-only)"
    free = vfs.bavail * vfs.frsize
    if free < _NEARLY_FULL:
        return f" (no space left on the file system of {directory}: {free} bytes free)"
    if vfs.files and not vfs.favail:
        return f" (no free inodes left on the file system of {directory})"
    return ""
