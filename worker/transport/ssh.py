"""The SSH adapter: :class:`SshHost` implements ``RemoteHost``, :class:`SshFleet` ``Fleet``.

What the remote account needs
-----------------------------
* Key authentication for ``username`` with one of ``client_keys``; the server's host key listed
  in the inventory's ``known_hosts`` (an unknown or changed key is refused, never learned).
* The SFTP subsystem (OpenSSH's default ``Subsystem sftp``) with the ``posix-rename@openssh.com``
  and ``hardlink@openssh.com`` extensions (backups are hard links); file reads and writes go
  over one SFTP session per connection.
* Write access to the directory holding ``config_path``: candidates, backups and the lock file
  are created next to the live file so renames stay atomic and on one filesystem (and inside
  what an AppArmor profile for dhcpd allows). To keep the live file's owner on a replace the
  account must own it or be root; otherwise writes fail rather than silently change owner.
* A login shell that runs a POSIX command line (sh, bash, dash, ksh, zsh) and start-up files
  that print nothing on stdout (noise before the agent's banner is skipped, but is better not
  there). On the server's PATH: ``/bin/sh``, ``flock`` (util-linux) for the change lock and
  ``timeout`` (GNU coreutils), which stops a command at ``command_timeout`` on the server and
  gives it a process group of its own, so that the agent can end all of it when the worker
  goes. Without ``timeout`` everything works, but the worker times a command out itself
  (dropping its agent, and with it a change lock that agent held), and a command whose worker
  went is ended by killing the agent's own process group, together with the lock.
* The ``validate_command`` (default ``dhcpd -t -cf {path}``), ``restart_command`` and optional
  ``verify_command`` allowed to it (root, or sudo rules without a password prompt or tty).
  They run under ``/bin/sh -c`` with the environment the login shell exported once, when the
  agent started: ``PATH`` and other exported variables from start-up files apply, aliases and
  shell functions do not.
* For the verify phase (an ``omapi`` table in the inventory): TCP forwarding allowed to the
  account (OpenSSH's default ``AllowTcpForwarding yes``; ``local`` is enough, and a
  ``PermitOpen`` must list ``127.0.0.1:<omapi.port>``). Each reading opens one
  ``direct-tcpip`` channel to dhcpd's OMAPI on the server's loopback
  (:mod:`worker.transport.omapi`); nothing listens on the worker's side.
* Ideally ``ClientAliveInterval`` in sshd_config, so a lock held by a worker that vanished
  without closing its TCP connection is released within a bounded time.
* ``MaxSessions`` (default 10) above what one worker opens on one connection: an SFTP session,
  and one agent shell per change holding or waiting for the lock plus one per listing (or
  command run without the lock) at the same moment (up to
  :data:`~worker.transport.commands.MAX_IDLE_AGENTS` of them stay open between changes).

Execs: sshd runs every exec through the login shell, which reads its start-up files (150 ms
or far more with a version manager in ``.bashrc``). So commands and the lock go to *agents*
(:mod:`worker.transport.agent`): small ``/bin/sh`` loops started with one exec each, pooled per
connection and reused, that run a request framed on their stdin and frame the reply. A warm
change starts no exec: a pooled agent takes the lock, and while the change holds it that same
agent runs validate and restart-and-verify (``restart && verify``, one request), so when the
worker or its connection dies the agent ends the running command before the lock is free (see
the agent module). Reads, writes, renames and removes are SFTP requests; directory listings
go to another agent (SFTP sends every entry's attributes, which asyncssh decodes in Python).
A command past ``command_timeout`` is stopped on the server and ``Ambiguous``; its agent (and
the lock) stays usable. Only a reply that never comes (``command_timeout`` plus the kill grace
and a margin) discards the agent: the connection is then dead or wedged, and the lock with it.

Failure mapping: cannot connect / authenticate -> ``Unreachable``; host key not trusted ->
``HostKeyMismatch``; a command past its timeout, or a connection lost in the middle of a
mutating step -> ``Ambiguous``; a refused file operation -> ``RemoteFileError``
(``RemoteFileNotFound`` for a missing file); nothing answering OMAPI (refused, closed, no
answer within ``connect_timeout``) -> ``OmapiUnreachable``; a key refused or missing ->
``OmapiAuthFailed``; no relationship of that name -> ``failover_state`` returns None.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
from typing import TYPE_CHECKING

import structlog

from worker.change.ports import Fleet, RemoteHost
from worker.errors import UnknownServer
from worker.settings import Settings
from worker.transport.commands import AgentCommands
from worker.transport.connection import SshOptions
from worker.transport.files import SftpFiles
from worker.transport.inventory import Inventory
from worker.transport.omapi import OmapiReads

__all__ = ["SshFleet", "SshHost", "SshOptions", "make_room_for"]

log = structlog.get_logger(__name__)

#: File descriptors kept free beside one per server: the broker, logs, files, subprocesses.
FD_MARGIN = 256


class SshHost(SftpFiles, AgentCommands, OmapiReads):
    """One inventory server over a pooled asyncssh connection (reconnected when it dies): the
    file operations of :mod:`worker.transport.files`, the commands and change lock of
    :mod:`worker.transport.commands` and the OMAPI readings of :mod:`worker.transport.omapi`,
    on the connection of :mod:`worker.transport.connection`.

    Safe to share between concurrent changes: SSH multiplexes channels and SFTP requests.
    """

    def __repr__(self) -> str:
        s = self._server
        return f"SshHost({self._name!r}, {s.username}@{s.host}:{s.port})"

    async def close(self) -> None:
        """Close the pooled connection (locks held on it are released by the server)."""
        async with self._pool_lock:
            conn, self._conn, self._sftp = self._conn, None, None
            agents, self._agents = self._agents, []
        for agent in agents:
            agent.retire()
        if conn is not None:
            conn.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._options.connect_timeout):
                    await conn.wait_closed()


class SshFleet:
    """The inventory's servers over SSH: one pooled :class:`SshHost` per server name.

    Raises :class:`~worker.transport.inventory.InventoryError` at once if a client key or
    known_hosts file is missing: better at start-up than in the middle of a change.
    """

    def __init__(self, inventory: Inventory, settings: Settings | SshOptions | None = None) -> None:
        if isinstance(settings, Settings):
            options = SshOptions.from_settings(settings)
        else:
            options = settings or SshOptions()
        inventory.check_files()
        make_room_for(len(inventory.servers))
        self._inventory = inventory
        self._hosts = {name: SshHost(name, s, options) for name, s in inventory.servers.items()}

    @property
    def inventory(self) -> Inventory:
        return self._inventory

    def host(self, name: str) -> SshHost:
        try:
            return self._hosts[name]
        except KeyError:
            raise UnknownServer(f"server {name!r} is not in the inventory", server=name) from None

    def server_for_address(self, address: str) -> str | None:
        return self._inventory.server_for_address(address)

    async def close(self) -> None:
        await asyncio.gather(*(h.close() for h in self._hosts.values()))

    async def __aenter__(self) -> SshFleet:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def make_room_for(servers: int) -> None:
    """Raise the soft limit on open files to what a connection to each of ``servers`` needs.

    A fleet keeps one connection (one socket) per server it has talked to, until it closes;
    under the common soft limit of 1024 (systemd's default) a fleet of a thousand servers
    would find the last ones unreachable ("Too many open files"). The hard limit is as far as
    a process may go by itself: short of it, an error in the log says what to raise."""
    want = servers + FD_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    new = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if new > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    if new < want:  # an error: the rollout command, which logs errors only, shows it too
        log.error(
            "open_files.limit_too_low",
            servers=servers,
            limit=new,
            needed=want,
            hint="raise the hard limit (ulimit -Hn, or LimitNOFILE= in the systemd unit)",
        )


if TYPE_CHECKING:

    def _implements_the_ports(host: SshHost, fleet: SshFleet) -> tuple[RemoteHost, Fleet]:
        """mypy proves here that the adapter satisfies the coordinator's protocols."""
        return host, fleet
