"""Reading a running dhcpd's ``failover-state`` over OMAPI, through the server's SSH connection.

Path: one SSH ``direct-tcpip`` channel per reading, on the worker's pooled connection, to
``127.0.0.1:<omapi.port>`` on the server -- what a local port forward does per connection it
accepts, without the listening socket. A listener on the worker's 127.0.0.1 would hand every
local process the server's OMAPI, which without a key can delete leases and hosts or shut
dhcpd down; a channel is reachable only from this code. It also needs no lifetime of its own
(a reconnect simply opens the next channel on the new connection) and keeps everything on the
event loop, so a reading is cancelled and timed out like any other step, never left blocked
in a thread.

Protocol: pypureomapi's sans-I/O half (``OmapiProtocol``, ``OmapiMessage``, its HMAC-MD5
authenticator) over the channel's bytes. Its blocking client (``Omapi``) is not used: its
lookups turn every ``status`` answer into ``OmapiErrorNotFound``, and that hides exactly the
difference the verify phase needs. dhcpd's ``status`` carries an ``isc_result_t`` (seen on
isc-dhcp-server 4.4.3-P1; codes from ``includes/isc-dhcp/result.h``):

* ``ISC_R_NOTFOUND`` (23, "no object matches specification") -- no relationship of that name;
  also the answer when the key to open is not dhcpd's ``omapi-key``, or dhcpd has none;
* ``DHCP_R_NOKEYS`` ("No authenticator on message") -- dhcpd has an ``omapi-key`` and the
  message was not signed: what a client without a key gets, for any object name;
* ``DHCP_R_INVALIDKEY`` -- the signature does not verify: the right key name, a wrong secret
  (pypureomapi's client reports it as "signed with wrong authenticator").
"""

from __future__ import annotations

import asyncio
import binascii
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncssh
import pypureomapi
import structlog

from worker.change.running import PeerState, RunningState, VerifyPolicy
from worker.errors import OmapiAuthFailed, OmapiUnreachable, Unreachable
from worker.transport.connection import _CONNECTION_ERRORS, ServerConnection, _Gone

log = structlog.get_logger(__name__)

ISC_R_NOPERM = 6
ISC_R_NOTFOUND = 23
_DHCP = 6 << 16  # ISC_RESULTCLASS_DHCP
DHCP_R_NOKEYS = _DHCP + 9
DHCP_R_KEY_UNKNOWN = _DHCP + 10
DHCP_R_INVALIDKEY = _DHCP + 11
DHCP_R_BADSIG = _DHCP + 23
DHCP_R_BADKEY = _DHCP + 24

_AUTH_RESULTS = {
    ISC_R_NOPERM: "permission denied",
    DHCP_R_NOKEYS: "dhcpd requires an OMAPI key (it has omapi-key set)",
    DHCP_R_KEY_UNKNOWN: "dhcpd does not know the key",
    DHCP_R_INVALIDKEY: "the signature does not verify: wrong key secret",
    DHCP_R_BADSIG: "bad signature",
    DHCP_R_BADKEY: "bad key",
}

#: ``failover-state`` attributes read, and the :class:`RunningState` field each fills.
#: ``local-address``/``partner-address`` are left out: dhcpd sends pointer bytes there.
_INT_FIELDS = {
    b"mclt": "mclt",
    b"local-port": "local_port",
    b"partner-port": "partner_port",
    b"max-outstanding-updates": "max_outstanding_updates",
    b"max-response-delay": "max_response_delay",
    b"load-balance-max-secs": "load_balance_max_secs",
    b"local-stos": "local_stos",
    b"partner-stos": "partner_stos",
    b"hierarchy": "hierarchy",
}


@dataclass(frozen=True)
class OmapiKey:
    """dhcpd's ``omapi-key``: the key's name and its base64 HMAC-MD5 secret."""

    name: str
    secret: bytes


class ByteReader(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


class ByteWriter(Protocol):
    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


def _uint32(value: bytes | None) -> int | None:
    """dhcpd sends integers as 4 bytes, big-endian; anything else was not one."""
    return int.from_bytes(value, "big") if value is not None and len(value) == 4 else None


def decode_failover_state(
    relationship: str, obj: Mapping[bytes, bytes], read_at: datetime
) -> RunningState:
    """A ``failover-state`` object's attributes as :class:`RunningState`."""
    local, partner = _uint32(obj.get(b"local-state")), _uint32(obj.get(b"partner-state"))
    skew = obj.get(b"skew")
    values: dict[str, Any] = {f: _uint32(obj.get(k)) for k, f in _INT_FIELDS.items()}
    return RunningState(
        relationship=relationship,
        local_state=PeerState.of(local if local is not None else 0),
        partner_state=PeerState.of(partner if partner is not None else 0),
        read_at=read_at,
        # dhcpd's skew is a C int sent as uint32: the partner's clock may be behind.
        skew=int.from_bytes(skew, "big", signed=True) if skew and len(skew) == 4 else None,
        **values,
    )


def status_of(message: Any) -> tuple[int | None, str]:
    """The ``isc_result_t`` and text of a ``status`` answer."""
    fields = dict(message.message)
    text = fields.get(b"message", b"").decode("utf-8", "replace")
    return _uint32(fields.get(b"result")), text


def _describe(result: int | None, text: str) -> str:
    known = _AUTH_RESULTS.get(result) if result is not None else None
    parts = [p for p in (known, text and repr(text)) if p]
    code = "no result code" if result is None else f"result {result:#x}"
    return f"{'; '.join(parts) or 'status'} ({code})"


class OmapiSignatureError(pypureomapi.OmapiError):  # type: ignore[misc]
    """An answer signed with another key than ours: an authentication failure."""


class _Transport:
    """What ``OmapiProtocol`` writes to and closes: the channel's writer."""

    def __init__(self, writer: ByteWriter) -> None:
        self._writer = writer

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    def close(self) -> None:
        self._writer.close()


class OmapiSession:
    """One OMAPI conversation on a byte stream: handshake, optional key, requests.

    ``EOFError`` when the stream ends before an answer; ``pypureomapi.OmapiError`` when what
    arrives is not OMAPI. The caller maps both (:func:`read_failover_state`).
    """

    def __init__(self, reader: ByteReader, writer: ByteWriter) -> None:
        self._reader = reader
        self._inbox: list[Any] = []
        self._protocol = pypureomapi.OmapiProtocol()
        # The hooks pypureomapi's own client sets: the startup message, then each message.
        self._protocol.startup_completed = lambda: self._inbox.append(None)
        self._protocol.message_received = self._inbox.append
        self._protocol.connection_made(_Transport(writer))

    async def _next(self) -> Any:
        while not self._inbox:
            data = await self._reader.read(4096)
            if not data:
                raise EOFError("OMAPI connection closed before an answer")
            self._protocol.data_received(data)
        return self._inbox.pop(0)

    async def start(self) -> None:
        """Wait for dhcpd's startup message (version and header size checked)."""
        if await self._next() is not None:
            raise pypureomapi.OmapiError("a message came before the startup message")

    @property
    def authid(self) -> int:
        """The authenticator the session signs with (0: none)."""
        return int(self._protocol.defauth)

    async def request(self, message: Any) -> Any:
        """Send ``message`` signed with the current key; its answer, signature checked."""
        self._protocol.send_message(message)
        while True:
            answer = await self._next()
            if answer is None:
                raise pypureomapi.OmapiError("a second startup message")
            if answer.is_response(message):
                break  # dhcpd sends nothing unasked on a client connection; skip if it did
        if not answer.verify(self._protocol.authenticators):
            raise OmapiSignatureError("the answer's signature does not verify with the key")
        return answer

    async def authenticate(self, key: OmapiKey) -> tuple[int | None, str] | None:
        """Open an authenticator for ``key`` and sign every later request with it; the
        ``status`` when dhcpd refuses (it names no such key)."""
        authenticator = pypureomapi.OmapiHMACMD5Authenticator(key.name.encode(), key.secret)
        message = pypureomapi.OmapiMessage.open(b"authenticator")
        message.update_object(authenticator.auth_object())
        answer = await self.request(message)
        if answer.opcode != pypureomapi.OMAPI_OP_UPDATE or not answer.handle:
            return status_of(answer)
        authenticator.authid = answer.handle
        self._protocol.authenticators[answer.handle] = authenticator
        self._protocol.defauth = answer.handle
        return None


async def read_failover_state(
    reader: ByteReader,
    writer: ByteWriter,
    relationship: str,
    key: OmapiKey | None,
    *,
    server: str,
    where: str,
) -> RunningState | None:
    """Read the ``failover-state`` named ``relationship``; None when dhcpd has none.

    ``OmapiAuthFailed`` when the key is refused or dhcpd wants one and there is none;
    ``OmapiUnreachable`` when what answers is not a usable OMAPI; ``EOFError`` when the
    stream ends first (the caller tells a dead SSH connection from a dhcpd that went).
    ``where`` names the OMAPI endpoint in messages.
    """
    session = OmapiSession(reader, writer)
    try:
        await session.start()
        if key is not None:
            refused = await session.authenticate(key)
            if refused is not None:
                raise OmapiAuthFailed(
                    f"{server}: dhcpd refused OMAPI key {key.name!r} at {where}: "
                    f"{_describe(*refused)}; its omapi-key names another key, or it has none",
                    server=server,
                )
        query = pypureomapi.OmapiMessage.open(b"failover-state")
        query.obj.append((b"name", relationship.encode("utf-8", "surrogateescape")))
        answer = await session.request(query)
    except (OmapiSignatureError, binascii.Error) as e:
        raise OmapiAuthFailed(f"{server}: OMAPI at {where}: {e}", server=server) from e
    except pypureomapi.OmapiError as e:
        raise OmapiUnreachable(
            f"{server}: {where} does not answer as dhcpd's OMAPI: {e}", server=server
        ) from e
    read_at = datetime.now(UTC)
    if answer.opcode == pypureomapi.OMAPI_OP_UPDATE:
        if key is not None and answer.authid != session.authid:
            raise OmapiAuthFailed(
                f"{server}: OMAPI at {where} answered without the key", server=server
            )
        return decode_failover_state(relationship, dict(answer.obj), read_at)
    result, text = status_of(answer)
    if result == ISC_R_NOTFOUND:
        return None
    if result in _AUTH_RESULTS:
        hint = (
            "; add key_name and key_secret_file to the inventory's omapi table"
            if key is None and result == DHCP_R_NOKEYS
            else ""
        )
        raise OmapiAuthFailed(
            f"{server}: OMAPI at {where} refused the request: {_describe(result, text)}{hint}",
            server=server,
        )
    raise OmapiUnreachable(
        f"{server}: OMAPI at {where} could not read failover-state {relationship!r}: "
        f"{_describe(result, text)}",
        server=server,
    )


class OmapiReads(ServerConnection):
    """The OMAPI readings of :class:`~worker.transport.ssh.SshHost` (``RemoteHost.omapi`` and
    ``failover_state``), one ``direct-tcpip`` channel each on the pooled connection."""

    @property
    def omapi(self) -> VerifyPolicy | None:
        entry = self._server.omapi
        return None if entry is None else entry.policy

    async def failover_state(self, relationship: str) -> RunningState | None:
        """See ``RemoteHost.failover_state``. Bounded by ``connect_timeout`` (one answer is
        one round trip); a connection found dead is replaced once, as for a file read. An
        SSH connection that cannot be made at all is ``Unreachable``, as for every step."""
        entry = self._server.omapi
        if entry is None:
            raise OmapiUnreachable(
                f"{self._name}: no omapi table in the inventory", server=self._name
            )
        try:
            secret = entry.key_secret()
        except (OSError, ValueError) as e:
            raise OmapiAuthFailed(
                f"{self._name}: cannot use the OMAPI key secret: {e}", server=self._name
            ) from e
        key = None if secret is None or entry.key_name is None else OmapiKey(entry.key_name, secret)
        for attempt in (1, 2):
            try:
                return await self._omapi_once(relationship, entry.port, key)
            except _Gone as e:
                if attempt == 2:
                    raise Unreachable(
                        f"{self._name}: connection lost twice reading OMAPI", server=self._name
                    ) from e
        raise AssertionError("unreachable")  # pragma: no cover

    async def _omapi_once(
        self, relationship: str, port: int, key: OmapiKey | None
    ) -> RunningState | None:
        self._check_lock()
        conn = await self._connection()
        where = f"127.0.0.1:{port} on the server"
        timeout = self._options.connect_timeout
        started = time.monotonic()  # after the connection: what one reading costs
        try:
            async with asyncio.timeout(timeout):
                try:
                    reader, writer = await conn.open_connection("127.0.0.1", port)
                except asyncssh.ChannelOpenError as e:
                    raise self._refused(e, where) from e
                try:
                    state = await read_failover_state(
                        reader, writer, relationship, key, server=self._name, where=where
                    )
                finally:
                    writer.close()
        except TimeoutError as e:
            raise OmapiUnreachable(
                f"{self._name}: no OMAPI answer from {where} within {timeout:g}s",
                server=self._name,
            ) from e
        except _CONNECTION_ERRORS as e:
            if not conn.is_closed():
                # The SSH connection is fine: dhcpd closed or reset its end (restarting?).
                raise OmapiUnreachable(
                    f"{self._name}: OMAPI at {where} closed the connection before answering",
                    server=self._name,
                ) from e
            self._forget(conn)
            raise _Gone(str(e)) from e
        log.debug(
            "omapi.read",
            server=self._name,
            relationship=relationship,
            found=state is not None,
            ms=int((time.monotonic() - started) * 1000),
        )
        return state

    def _refused(self, error: asyncssh.ChannelOpenError, where: str) -> OmapiUnreachable:
        """sshd could not, or would not, connect to the OMAPI port for us."""
        if error.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED:
            why = (
                "sshd refuses TCP forwarding for this account (AllowTcpForwarding / "
                "PermitOpen in sshd_config must allow 127.0.0.1 on that port)"
            )
        else:
            why = f"nothing answers there ({error.reason}): dhcpd down, or omapi-port differs"
        return OmapiUnreachable(f"{self._name}: OMAPI at {where}: {why}", server=self._name)
