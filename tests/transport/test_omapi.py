"""OMAPI readings of ``failover-state``: decoding and error mapping on a scripted dhcpd, then
through SshHost on the lab's real dhcpd pair over real sshd channels (see the lab section)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import signal
import time
import tomllib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pypureomapi
import pytest

from tests.fixtures.lab import NORMAL_TIMEOUT, start_lab
from worker.change.running import PeerState, RunningState, VerifyPolicy
from worker.errors import OmapiAuthFailed, OmapiUnreachable
from worker.lab import OMAPI_PORT, Lab
from worker.transport import SshFleet, SshOptions, parse_inventory
from worker.transport.omapi import (
    DHCP_R_INVALIDKEY,
    DHCP_R_NOKEYS,
    ISC_R_NOTFOUND,
    OmapiKey,
    decode_failover_state,
    read_failover_state,
)

SECRET = b"d9Swjqc4XcTo+hQAS3SA/Q=="
KEY = OmapiKey("omkey", SECRET)


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


#: A primary's object as dhcpd 4.4.3 sends it (addresses are pointer bytes: a dhcpd bug).
PRIMARY_OBJECT = [
    (b"name", b"fo"),
    (b"partner-address", b"\xc0\xb9b\xc6\xebU\x00\x00"),
    (b"partner-port", u32(847)),
    (b"local-address", b"\x10\xb9b\xc6\xebU\x00\x00"),
    (b"local-port", u32(647)),
    (b"max-outstanding-updates", u32(10)),
    (b"mclt", u32(600)),
    (b"load-balance-max-secs", u32(3)),
    (b"load-balance-hba", b"\xff" * 16 + b"\x00" * 16),
    (b"partner-state", u32(2)),
    (b"local-state", u32(2)),
    (b"partner-stos", u32(1796171331)),
    (b"local-stos", u32(1796171330)),
    (b"hierarchy", u32(0)),
    (b"last-packet-sent", u32(0)),
    (b"last-timestamp-received", u32(0)),
    (b"skew", u32(0)),
    (b"max-response-delay", u32(30)),
    (b"cur-unacked-updates", u32(0)),
]


# -- decoding -----------------------------------------------------------------------------------


def test_every_field_dhcpd_sends_is_decoded_as_a_big_endian_integer() -> None:
    read_at = datetime(2026, 1, 1, tzinfo=UTC)
    state = decode_failover_state("fo", dict(PRIMARY_OBJECT), read_at)
    assert state.relationship == "fo" and state.read_at == read_at
    assert (state.local_state, state.partner_state) == (PeerState.normal, PeerState.normal)
    assert (state.mclt, state.local_port, state.partner_port) == (600, 647, 847)
    assert (state.max_outstanding_updates, state.max_response_delay) == (10, 30)
    assert state.load_balance_max_secs == 3
    assert (state.local_stos, state.partner_stos) == (1796171330, 1796171331)
    assert (state.hierarchy, state.skew) == (0, 0)


def test_a_partner_never_seen_is_state_unknown_and_missing_fields_are_none() -> None:
    state = decode_failover_state(
        "fo", {b"local-state": u32(1), b"partner-state": u32(0)}, datetime.now(UTC)
    )
    assert (state.local_state, state.partner_state) == (PeerState.startup, PeerState.unknown)
    assert state.mclt is None and state.local_port is None and state.skew is None


def test_a_state_number_dhcpd_may_add_later_is_unknown_not_an_error() -> None:
    obj = {b"local-state": u32(254), b"partner-state": u32(77)}
    state = decode_failover_state("fo", obj, datetime.now(UTC))
    assert (state.local_state, state.partner_state) == (PeerState.recover_wait, PeerState.unknown)


def test_a_value_that_is_not_four_bytes_is_not_read_and_skew_is_signed() -> None:
    obj = {b"local-state": u32(2), b"mclt": b"\x02X", b"skew": (-3).to_bytes(4, "big", signed=True)}
    state = decode_failover_state("fo", obj, datetime.now(UTC))
    assert state.mclt is None
    assert state.skew == -3


# -- a scripted dhcpd on an in-memory stream ------------------------------------------------


def _sign(key: bytes, message: pypureomapi.OmapiMessage) -> bytes:
    secret = binascii.a2b_base64(key)
    return hmac.new(secret, message.as_string(forsigning=True), hashlib.md5).digest()


class ScriptedDhcpd:
    """The OMAPI answers dhcpd 4.4.3 gave in the lab (see worker.transport.omapi's docstring),
    on a stream the session reads and writes: its writer side parses what the client sends."""

    def __init__(
        self,
        objects: dict[bytes, list[tuple[bytes, bytes]]] | None = None,
        *,
        key: OmapiKey | None = None,
        banner: bytes | None = None,
        hang_up_after: int | None = None,
        answer: Callable[[pypureomapi.OmapiMessage], pypureomapi.OmapiMessage] | None = None,
    ) -> None:
        self.objects = {b"fo": PRIMARY_OBJECT} if objects is None else objects
        self.key = key
        self.banner = banner
        self.hang_up_after = hang_up_after
        self.answer = answer
        self.received: list[pypureomapi.OmapiMessage] = []
        self.closed = False
        self._out: asyncio.Queue[bytes] = asyncio.Queue()
        self._in = pypureomapi.InBuffer()
        self._parser: Any = self._in.parse_startup_message()

    # -- the client's reader
    async def read(self, n: int = -1) -> bytes:
        return await self._out.get()

    # -- the client's writer
    def close(self) -> None:
        self.closed = True

    def write(self, data: bytes) -> None:
        self._in.feed(data)
        while (item := next(self._parser)) is not None:
            self._in.resetsize()
            self._parser = self._in.parse_message()
            if isinstance(item, pypureomapi.OmapiStartupMessage):
                self._send_raw(self.banner or pypureomapi.OmapiStartupMessage().as_string())
            else:
                self.received.append(item)
                if self.hang_up_after is not None and len(self.received) > self.hang_up_after:
                    self._send_raw(b"")
                    continue
                self._send(self.answer(item) if self.answer else self._dhcpd(item))

    def _send_raw(self, data: bytes) -> None:
        self._out.put_nowait(data)

    def _send(self, reply: pypureomapi.OmapiMessage) -> None:
        self._send_raw(reply.as_string())

    def _status(
        self, to: pypureomapi.OmapiMessage, result: int, text: bytes | None, *, signed: bool = False
    ) -> pypureomapi.OmapiMessage:
        fields = [(b"result", u32(result))] + ([(b"message", text)] if text else [])
        reply = pypureomapi.OmapiMessage(
            opcode=pypureomapi.OMAPI_OP_STATUS, rid=to.tid, tid=-1, message=fields
        )
        return self._signed(reply) if signed else reply

    def _signed(self, reply: pypureomapi.OmapiMessage) -> pypureomapi.OmapiMessage:
        assert self.key is not None
        reply.authid = 1
        reply.signature = b"\0" * 16
        reply.signature = _sign(self.key.secret, reply)
        return reply

    def _dhcpd(self, m: pypureomapi.OmapiMessage) -> pypureomapi.OmapiMessage:
        kind = dict(m.message).get(b"type")
        if kind == b"authenticator":
            if self.key is None or dict(m.obj).get(b"name") != self.key.name.encode():
                return self._status(m, ISC_R_NOTFOUND, b"no object matches specification")
            return pypureomapi.OmapiMessage(
                opcode=pypureomapi.OMAPI_OP_UPDATE, handle=1, rid=m.tid, tid=-1, obj=list(m.obj)
            )
        signed = False
        if self.key is not None:
            if m.authid == 0:
                return self._status(m, DHCP_R_NOKEYS, b"No authenticator on message")
            if _sign(self.key.secret, m) != m.signature:
                return self._status(m, DHCP_R_INVALIDKEY, None)
            signed = True
        name = dict(m.obj).get(b"name", b"")
        if kind != b"failover-state" or name not in self.objects:
            return self._status(
                m, ISC_R_NOTFOUND, b"no object matches specification", signed=signed
            )
        reply = pypureomapi.OmapiMessage(
            opcode=pypureomapi.OMAPI_OP_UPDATE, handle=2, rid=m.tid, tid=-1, obj=self.objects[name]
        )
        return self._signed(reply) if signed else reply


async def read(dhcpd: ScriptedDhcpd, relationship: str = "fo", key: OmapiKey | None = None) -> Any:
    async with asyncio.timeout(5):
        return await read_failover_state(
            dhcpd, dhcpd, relationship, key, server="dhcp1", where="127.0.0.1:7911"
        )


async def test_an_open_omapi_is_read_and_the_query_names_the_relationship() -> None:
    dhcpd = ScriptedDhcpd()
    state = await read(dhcpd)
    assert state is not None and state.local_state is PeerState.normal and state.mclt == 600
    (query,) = dhcpd.received
    assert dict(query.message)[b"type"] == b"failover-state"
    assert dict(query.obj)[b"name"] == b"fo"


async def test_a_relationship_dhcpd_does_not_have_is_none() -> None:
    assert await read(ScriptedDhcpd(), "other") is None


async def test_a_keyed_omapi_is_read_with_the_key_and_every_query_is_signed() -> None:
    dhcpd = ScriptedDhcpd(key=KEY)
    state = await read(dhcpd, key=KEY)
    assert state is not None and state.partner_state is PeerState.normal
    opened, query = dhcpd.received
    assert dict(opened.obj)[b"name"] == b"omkey"
    assert query.authid == 1 and query.signature == _sign(SECRET, query)


async def test_a_missing_relationship_on_a_keyed_omapi_is_still_none() -> None:
    assert await read(ScriptedDhcpd(key=KEY), "other", key=KEY) is None


async def test_a_keyed_dhcpd_asked_without_a_key_is_an_auth_failure_not_a_missing_peer() -> None:
    """pypureomapi's own lookups report this answer as OmapiErrorNotFound."""
    with pytest.raises(OmapiAuthFailed, match="requires an OMAPI key") as caught:
        await read(ScriptedDhcpd(key=KEY))
    assert "key_name and key_secret_file" in caught.value.message
    assert caught.value.server == "dhcp1"


async def test_a_wrong_secret_is_an_auth_failure() -> None:
    wrong = OmapiKey("omkey", b"AAAAAAAAAAAAAAAAAAAAAA==")
    with pytest.raises(OmapiAuthFailed, match="wrong key secret"):
        await read(ScriptedDhcpd(key=KEY), key=wrong)


async def test_a_key_name_dhcpd_does_not_know_is_an_auth_failure() -> None:
    with pytest.raises(OmapiAuthFailed, match="refused OMAPI key 'other'"):
        await read(ScriptedDhcpd(key=KEY), key=OmapiKey("other", SECRET))


async def test_a_key_for_a_dhcpd_without_omapi_key_is_an_auth_failure() -> None:
    with pytest.raises(OmapiAuthFailed, match="or it has none"):
        await read(ScriptedDhcpd(), key=KEY)


async def test_an_answer_signed_with_another_key_is_an_auth_failure() -> None:
    dhcpd = ScriptedDhcpd(key=OmapiKey("omkey", b"BBBBBBBBBBBBBBBBBBBBBB=="))
    dhcpd.key = KEY  # accepts our signature, then signs with another secret

    def forge(m: pypureomapi.OmapiMessage) -> pypureomapi.OmapiMessage:
        if dict(m.message).get(b"type") == b"authenticator":
            return dhcpd._dhcpd(m)
        reply = pypureomapi.OmapiMessage(opcode=pypureomapi.OMAPI_OP_UPDATE, rid=m.tid, tid=-1)
        dhcpd.key = OmapiKey("omkey", b"BBBBBBBBBBBBBBBBBBBBBB==")
        return dhcpd._signed(reply)

    dhcpd.answer = forge
    with pytest.raises(OmapiAuthFailed, match="signature does not verify"):
        await read(dhcpd, key=KEY)


async def test_an_unsigned_update_when_a_key_is_used_is_an_auth_failure() -> None:
    dhcpd = ScriptedDhcpd(key=KEY)

    def unsigned(m: pypureomapi.OmapiMessage) -> pypureomapi.OmapiMessage:
        if dict(m.message).get(b"type") == b"authenticator":
            return dhcpd._dhcpd(m)
        return pypureomapi.OmapiMessage(
            opcode=pypureomapi.OMAPI_OP_UPDATE, rid=m.tid, tid=-1, obj=PRIMARY_OBJECT
        )

    dhcpd.answer = unsigned
    with pytest.raises(OmapiAuthFailed, match="without the key"):
        await read(dhcpd, key=KEY)


async def test_another_status_is_unreachable_with_dhcpds_text() -> None:
    dhcpd = ScriptedDhcpd()
    dhcpd.answer = lambda m: dhcpd._status(m, 3 << 16 | 3, b"invalid argument")
    with pytest.raises(OmapiUnreachable, match="'invalid argument'"):
        await read(dhcpd)


async def test_something_that_is_not_omapi_is_unreachable() -> None:
    with pytest.raises(OmapiUnreachable, match="does not answer as dhcpd's OMAPI"):
        await read(ScriptedDhcpd(banner=b"\x00\x00\x00\x63\x00\x00\x00\x18"))


async def test_a_dhcpd_that_hangs_up_before_answering_is_eof_for_the_caller_to_judge() -> None:
    dhcpd = ScriptedDhcpd(hang_up_after=0)
    with pytest.raises(EOFError):
        await read(dhcpd)


# -- the lab: a real dhcpd pair, read through SshHost over real sshd channels --------------------

LAB_OPTIONS = SshOptions(connect_timeout=3, command_timeout=10, keepalive_interval=5)
F = TypeVar("F", bound=Callable[..., Any])


def lab_test(test: F) -> F:
    """Marks of the tests on the lab (they start namespaces, dhcpd and sshd)."""
    marked: F = pytest.mark.integration(pytest.mark.timeout(90)(test))
    return marked


@pytest.fixture(scope="module")
def keyed_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The lab pair with an ``omapi-key`` in both dhcpd.conf files (``lab`` has none)."""
    with start_lab(tmp_path_factory.mktemp("keyed-lab"), omapi_key=True) as started:
        started.wait_normal(NORMAL_TIMEOUT)
        yield started


def lab_fleet(lab: Lab, options: SshOptions = LAB_OPTIONS, **omapi: Any) -> SshFleet:
    """The lab's inventory with an omapi table for its dhcpds (their key, if they have one)
    changed by ``omapi`` (a None value drops the field)."""
    table: dict[str, Any] = {"port": OMAPI_PORT, "none": True}
    if lab.omapi_key is not None and lab.omapi_secret_file is not None:
        table = {
            "port": OMAPI_PORT,
            "key_name": lab.omapi_key.name,
            "key_secret_file": str(lab.omapi_secret_file),
        }
    table = {k: v for k, v in {**table, **omapi}.items() if v is not None}
    raw = tomllib.loads(lab.inventory_path.read_text())
    for entry in raw["servers"].values():
        entry["omapi"] = table
    return SshFleet(parse_inventory(raw, lab.inventory_path), options)


async def read_both(fleet: SshFleet, relationship: str) -> dict[str, RunningState | None]:
    return {n: await fleet.host(n).failover_state(relationship) for n in ("primary", "secondary")}


@pytest.mark.parametrize("lab_name", ["lab", "keyed_lab"])
@lab_test
async def test_lab_both_peers_read_normal_with_their_running_values(
    lab_name: str, request: pytest.FixtureRequest
) -> None:
    lab: Lab = request.getfixturevalue(lab_name)
    async with lab_fleet(lab) as fleet:
        assert fleet.host("primary").omapi == VerifyPolicy(frozenset({PeerState.normal}), 60.0)
        seen = await read_both(fleet, lab.relationship)
    primary, secondary = seen["primary"], seen["secondary"]
    assert primary is not None and secondary is not None
    for state in primary, secondary:
        assert (state.local_state, state.partner_state) == (PeerState.normal, PeerState.normal)
        assert state.max_response_delay == lab.peer.max_response_delay
        assert state.max_outstanding_updates == lab.peer.max_unacked_updates
        assert state.local_stos is not None and state.local_stos <= time.time()
    assert (primary.hierarchy, secondary.hierarchy) == (0, 1)
    assert primary.partner_port == secondary.local_port == lab.peer.peer_port
    assert secondary.partner_port == primary.local_port == lab.peer.port
    assert secondary.mclt == primary.mclt == lab.peer.mclt  # the secondary adopts it


@lab_test
async def test_lab_a_relationship_dhcpd_does_not_have_reads_none(lab: Lab) -> None:
    async with lab_fleet(lab) as fleet:
        assert await read_both(fleet, "no-such-peer") == {"primary": None, "secondary": None}


@lab_test
async def test_lab_a_missing_relationship_on_a_keyed_omapi_reads_none(keyed_lab: Lab) -> None:
    async with lab_fleet(keyed_lab) as fleet:
        assert await fleet.host("secondary").failover_state("no-such-peer") is None


@lab_test
async def test_lab_a_keyed_dhcpd_asked_without_a_key_is_an_auth_failure(keyed_lab: Lab) -> None:
    # pypureomapi's own client calls this answer "not found", like a missing relationship:
    def lookup() -> None:
        client = pypureomapi.Omapi(keyed_lab.servers["primary"].address, OMAPI_PORT, timeout=2)
        try:
            client.lookup_by_failoverstate(name=keyed_lab.relationship)
        finally:
            client.close()

    with pytest.raises(pypureomapi.OmapiErrorNotFound):
        await asyncio.to_thread(lookup)
    async with lab_fleet(keyed_lab, none=True, key_name=None, key_secret_file=None) as fleet:
        with pytest.raises(OmapiAuthFailed, match="requires an OMAPI key") as caught:
            await fleet.host("primary").failover_state(keyed_lab.relationship)
    assert caught.value.server == "primary"


@lab_test
async def test_lab_a_wrong_key_secret_is_an_auth_failure(keyed_lab: Lab, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.secret"
    wrong.write_text(base64.b64encode(b"x" * 32).decode() + "\n")
    async with lab_fleet(keyed_lab, key_secret_file=str(wrong)) as fleet:
        with pytest.raises(OmapiAuthFailed, match="wrong key secret"):
            await fleet.host("secondary").failover_state(keyed_lab.relationship)


@lab_test
async def test_lab_a_key_name_dhcpd_does_not_know_is_an_auth_failure(keyed_lab: Lab) -> None:
    async with lab_fleet(keyed_lab, key_name="not_the_key") as fleet:
        with pytest.raises(OmapiAuthFailed, match="refused OMAPI key 'not_the_key'"):
            await fleet.host("primary").failover_state(keyed_lab.relationship)


@lab_test
async def test_lab_a_key_for_a_dhcpd_without_omapi_key_is_an_auth_failure(
    lab: Lab, tmp_path: Path
) -> None:
    secret = tmp_path / "omapi.secret"
    secret.write_text(base64.b64encode(b"x" * 32).decode())
    async with lab_fleet(lab, none=None, key_name="k", key_secret_file=str(secret)) as fleet:
        with pytest.raises(OmapiAuthFailed, match="or it has none"):
            await fleet.host("primary").failover_state(lab.relationship)


@lab_test
async def test_lab_an_omapi_port_nothing_listens_on_is_unreachable(lab: Lab) -> None:
    async with lab_fleet(lab, port=7999) as fleet:
        with pytest.raises(OmapiUnreachable, match=r"127\.0\.0\.1:7999.*Connection refused"):
            await fleet.host("primary").failover_state(lab.relationship)


@lab_test
async def test_lab_a_dhcpd_that_accepts_but_never_answers_is_unreachable_at_the_timeout(
    lab: Lab,
) -> None:
    pid = lab.servers["secondary"].dhcpd_pid
    assert pid is not None
    options = SshOptions(connect_timeout=1, command_timeout=5, keepalive_interval=5)
    async with lab_fleet(lab, options) as fleet:
        host = fleet.host("secondary")
        await host.failover_state(lab.relationship)  # connected: only OMAPI is timed
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(OmapiUnreachable, match=r"no OMAPI answer .* within 1s"):
                await host.failover_state(lab.relationship)
            assert time.monotonic() - started < 2
        finally:
            os.kill(pid, signal.SIGCONT)
    lab.wait_normal()


@lab_test
async def test_lab_a_restarted_dhcpd_is_unreachable_while_down_and_its_partner_shows_the_restart(
    lab: Lab,
) -> None:
    """What a verify can tell a new process by (dhcpd 4.4.3-P1): NOT the restarted server's
    own ``local_stos``, which it restores from its lease file (``my state normal at ...``),
    but its ``partner_stos`` and its partner's ``local_stos``: the partner saw the failover
    connection drop and entered ``normal`` again after the restart."""
    async with lab_fleet(lab) as fleet:
        secondary, primary = fleet.host("secondary"), fleet.host("primary")
        before = await secondary.failover_state(lab.relationship)
        assert before is not None and before.local_stos is not None
        await asyncio.sleep(max(0.0, before.local_stos + 1.1 - time.time()))
        lab.kill_dhcpd("secondary")
        with pytest.raises(OmapiUnreachable, match="nothing answers there"):
            await secondary.failover_state(lab.relationship)
        restarted_at = int(time.time())
        assert restarted_at > before.local_stos
        await asyncio.to_thread(lab.restart_dhcpd, "secondary")
        after = None
        async with asyncio.timeout(30):
            while after is None or after.local_state is not PeerState.normal:
                with contextlib.suppress(OmapiUnreachable):
                    after = await secondary.failover_state(lab.relationship)
                await asyncio.sleep(0.05)
        await asyncio.to_thread(lab.wait_normal)
        after = await secondary.failover_state(lab.relationship)
        partner = await primary.failover_state(lab.relationship)
    assert after is not None and partner is not None
    assert after.local_stos == before.local_stos  # restored from the lease file: stale
    assert after.partner_stos is not None and after.partner_stos >= restarted_at
    assert partner.local_stos is not None and partner.local_stos >= restarted_at
    assert secondary.connections_opened == 1  # all of it on one SSH connection


@lab_test
async def test_lab_readings_go_on_over_a_new_connection_after_the_old_one_closed(
    lab: Lab,
) -> None:
    async with lab_fleet(lab) as fleet:
        host = fleet.host("primary")
        assert await host.failover_state(lab.relationship) is not None
        await host.close()
        state = await host.failover_state(lab.relationship)
        assert state is not None and state.local_state is PeerState.normal
        assert host.connections_opened == 2
