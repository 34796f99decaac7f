"""Requests through the real broker to the real ``serve``, on real sshd hosts with real dhcpd.

Nothing is stubbed: the request is published the way ``dhcp-failover-worker publish --wait``
publishes it, the worker resolves the inventory, edits both live files over SSH, validates with
``dhcpd -t``, restarts (a script that checks the live file with dhcpd and logs the sha256 it
came up on), and answers on the event exchange and to ``reply_to``. The checks read the live
files and logs on the hosts and the events on the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.change.helpers import (
    PRIMARY_AFTER,
    PRIMARY_CONF,
    SCOPES,
    SECONDARY_AFTER,
    SECONDARY_CONF,
    sha,
    without_durations,
)
from tests.consumer.proxy import TcpProxy
from tests.consumer.support import assert_depth, check_event_message, get_one
from tests.e2e.conftest import ServeOn, Stack
from tests.e2e.support import (
    assert_untouched,
    bind_event_queue,
    change_ended,
    change_files,
    config_dir_listing,
    expected_diff,
    fail_restart_once,
    modify_body,
    new_request_id,
    record_restart_order,
    remove_body,
    restart_order,
    slow_restart,
)
from tests.fixtures.sshd import LocalHostsFactory
from worker.consumer.client import publish_request
from worker.demo import PRIMARY, RELATIONSHIP, SAMPLE_ADDRESSES, SECONDARY, sample_configs
from worker.demo.localhosts import LocalHost, LocalHosts, Restart
from worker.messages import MODIFY_COMMAND, REMOVE_COMMAND, ResultEvent
from worker.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


async def settled(stack: Stack) -> None:
    """The request was acked and nothing was dead-lettered."""
    await assert_depth(stack.amqp, stack.settings.request_queue, 0)
    await assert_depth(stack.amqp, stack.settings.dead_letter_queue, 0)


def assert_server(
    server: dict[str, Any], host: LocalHost, role: str, before: bytes, after: bytes
) -> None:
    """One ``data.servers`` entry of a change applied to ``host``, against its live file."""
    assert server["name"] == host.name
    assert server["role"] == role
    assert server["changed"] is True
    assert server["sha256Before"] == sha(before)
    assert server["sha256After"] == sha(after) == host.config_sha256()
    assert server["diff"] == expected_diff(host.config_path, before, after)
    assert server["restarted"] is True
    assert server["state"] == "new"
    assert server["files"] == {str(host.config_path): "new"}


# -- succeeded -------------------------------------------------------------------------------


async def test_a_modify_through_the_queue_changes_both_hosts_and_answers_with_a_matching_event(
    sample_hosts: LocalHosts, serve_on: ServeOn
) -> None:
    order = record_restart_order(sample_hosts)
    stack = await serve_on(sample_hosts)
    keyed = await bind_event_queue(stack.amqp, stack.settings, "event.modify.succeeded")
    request_id = new_request_id("modify")
    before = stack.live()
    assert before == {PRIMARY: PRIMARY_CONF.encode(), SECONDARY: SECONDARY_CONF.encode()}
    sent_at, clock = datetime.now(UTC) - timedelta(milliseconds=1), time.monotonic()

    reply = await stack.request(modify_body(request_id, Mclt=1800, Port=648), "request.modify")

    wall_ms = (time.monotonic() - clock) * 1000
    # The event as a subscriber bound to exactly ``event.modify.succeeded`` receives it.
    checked_event = check_event_message(await get_one(stack.amqp, keyed))
    message, raw = checked_event.message, checked_event.raw
    assert message.routing_key == "event.modify.succeeded"
    assert message.exchange == stack.settings.event_exchange
    assert message.content_type == "application/cloudevents+json"
    assert message.message_id == f"{request_id}/succeeded"
    assert message.correlation_id == request_id
    assert raw["specversion"] == "1.0"
    assert raw["id"] == f"{request_id}/succeeded"
    assert raw["source"] == "urn:dhcp-failover-worker"
    assert raw["type"] == "net.dhcp.failover.modify.succeeded"
    assert raw["subject"] == RELATIONSHIP
    assert raw["datacontenttype"] == "application/json"
    assert raw["correlationid"] == request_id
    assert sent_at <= checked_event.event.time <= datetime.now(UTC)
    data = raw["data"]
    assert data["requestId"] == request_id
    assert data["command"] == MODIFY_COMMAND
    assert data["outcome"] == "succeeded"
    assert data["dryRun"] is False
    assert data["error"] is None
    assert data["warnings"] == []
    assert 0 < data["durationMs"] <= wall_ms
    primary, secondary = data["servers"]
    assert_server(primary, stack.primary, "primary", before[PRIMARY], PRIMARY_AFTER.encode())
    assert_server(
        secondary, stack.secondary, "secondary", before[SECONDARY], SECONDARY_AFTER.encode()
    )
    assert "-  mclt 3600;\n+  mclt 1800;\n" in primary["diff"]
    assert "mclt" not in secondary["diff"]  # never added to the secondary

    # The caller's reply (reply_to) and the audit copy are the same event.
    tapped = await stack.tap.next_checked()
    assert reply == checked_event.event == tapped.event
    # The live files: exactly the expected texts; each host came up on its new file, once,
    # the primary first; the old file kept as a backup.
    assert stack.primary.config_bytes() == PRIMARY_AFTER.encode()
    assert stack.secondary.config_bytes() == SECONDARY_AFTER.encode()
    assert stack.primary.restarts() == [Restart("ok", sha(PRIMARY_AFTER))]
    assert stack.secondary.restarts() == [Restart("ok", sha(SECONDARY_AFTER))]
    assert restart_order(order) == [PRIMARY, SECONDARY]
    await change_ended(stack.primary, stack.secondary)
    for host, old in ((stack.primary, PRIMARY_CONF), (stack.secondary, SECONDARY_CONF)):
        files = change_files(host)
        assert files["temps"] == files["journals"] == []
        [backup] = files["backups"]
        assert (host.config_dir / backup).read_bytes() == old.encode()
    await settled(stack)
    await stack.tap.assert_quiet(0.3)


async def test_a_remove_through_the_queue_drops_the_peer_on_both_and_disables_the_secondarys_scopes(
    sample_hosts: LocalHosts, serve_on: ServeOn
) -> None:
    order = record_restart_order(sample_hosts)
    stack = await serve_on(sample_hosts)
    request_id = new_request_id("remove")
    before = stack.live()

    reply = await stack.request(remove_body(request_id, action="Disable"), "request.remove")

    checked = await stack.tap.next_checked()
    assert checked.message.routing_key == "event.remove.succeeded"
    assert reply == checked.event
    assert reply.id == f"{request_id}/succeeded"
    assert reply.type == "net.dhcp.failover.remove.succeeded"
    assert reply.subject == RELATIONSHIP
    assert reply.correlationid == request_id
    data = checked.raw["data"]
    assert (data["requestId"], data["command"]) == (request_id, REMOVE_COMMAND)
    assert (data["outcome"], data["dryRun"], data["error"]) == ("succeeded", False, None)
    primary_text = stack.primary.config_bytes().decode()
    secondary_text = stack.secondary.config_bytes().decode()
    primary, secondary = data["servers"]
    assert_server(primary, stack.primary, "primary", before[PRIMARY], primary_text.encode())
    assert_server(
        secondary, stack.secondary, "secondary", before[SECONDARY], secondary_text.encode()
    )
    # Both lost the declaration and every pool's reference; every scope is still declared;
    # the primary's pools serve alone, the secondary's are disabled with one line each.
    for text in (primary_text, secondary_text):
        assert 'failover peer "' not in text
        assert all(scope in text for scope in SCOPES)
    assert "deny all clients;" not in primary_text
    assert secondary_text.count("deny all clients;") == len(SCOPES)
    assert stack.primary.restarts() == [Restart("ok", sha(primary_text))]
    assert stack.secondary.restarts() == [Restart("ok", sha(secondary_text))]
    assert restart_order(order) == [PRIMARY, SECONDARY]
    await settled(stack)


async def test_a_dry_run_remove_reports_the_real_removes_diffs_and_changes_nothing(
    sample_hosts: LocalHosts, serve_on: ServeOn
) -> None:
    stack = await serve_on(sample_hosts)
    before = stack.live()
    listings = {name: config_dir_listing(h) for name, h in sample_hosts.hosts.items()}
    dry_id = new_request_id("remove-dry")

    dry = await stack.request(remove_body(dry_id, dry_run=True), "request.remove")

    checked = await stack.tap.next_checked()
    assert checked.message.routing_key == "event.remove.succeeded"
    assert dry == checked.event
    assert dry.id == f"{dry_id}/succeeded"
    assert dry.data.dryRun is True and dry.data.error is None
    assert [(s.name, s.role, s.changed, s.restarted, s.state) for s in dry.data.servers] == [
        (PRIMARY, "primary", True, False, "old"),
        (SECONDARY, "secondary", True, False, "old"),
    ]
    assert all(s.sha256Before == sha(before[s.name]) for s in dry.data.servers)
    assert_untouched(sample_hosts, before)
    for name, host in sample_hosts.hosts.items():  # at most the lock file is new
        assert config_dir_listing(host) - listings[name] <= {".dhcp-failover.lock"}

    # What the dry run reported is exactly what the real remove then does.
    real = await stack.request(remove_body(new_request_id("remove")), "request.remove")
    assert real.data.outcome == "succeeded" and real.data.dryRun is False
    assert [(s.diff, s.sha256After) for s in real.data.servers] == [
        (s.diff, s.sha256After) for s in dry.data.servers
    ]
    assert all(s.diff for s in real.data.servers)
    assert [s.sha256After for s in real.data.servers] == [
        stack.primary.config_sha256(),
        stack.secondary.config_sha256(),
    ]
    await settled(stack)


# -- rejected --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rejection:
    params: dict[str, Any]
    code: str
    #: The hosts run each other's config (and answer to each other's failover address).
    swapped: bool = False


REJECTIONS = {
    "unknown server": Rejection({"PrimaryServer": "dhcp9.example.net"}, "unknown_server"),
    "relationship not found": Rejection({"Name": "no-such-peer"}, "peer_not_found"),
    "roles swapped": Rejection({}, "roles_swapped", swapped=True),
}


@pytest.mark.parametrize("case", REJECTIONS.values(), ids=list(REJECTIONS))
async def test_a_request_the_coordinator_rejects_gets_its_own_error_code_and_touches_no_host(
    local_hosts: LocalHostsFactory, serve_on: ServeOn, case: Rejection
) -> None:
    configs, addresses = sample_configs(), dict(SAMPLE_ADDRESSES)
    if case.swapped:
        configs = {PRIMARY: configs[SECONDARY], SECONDARY: configs[PRIMARY]}
        addresses = {PRIMARY: addresses[SECONDARY], SECONDARY: addresses[PRIMARY]}
    hosts = local_hosts(configs, addresses=addresses)
    stack = await serve_on(hosts)
    before = stack.live()
    listings = {name: config_dir_listing(h) for name, h in hosts.hosts.items()}
    request_id = new_request_id("rejected")

    reply = await stack.request(modify_body(request_id, **case.params), "request.modify")

    checked = await stack.tap.next_checked()
    assert checked.message.routing_key == "event.modify.rejected"
    assert reply == checked.event
    assert reply.id == f"{request_id}/rejected"
    assert reply.type == "net.dhcp.failover.modify.rejected"
    data = reply.data
    assert (data.requestId, data.outcome, data.servers) == (request_id, "rejected", [])
    assert data.error is not None
    assert data.error.code == case.code, data.error
    assert data.error.message
    assert_untouched(hosts, before)
    # Nothing new but the lock file, which the first request to reach a server creates (a
    # modify tries its locks before it plans) and which stays, as after any change.
    after = {name: config_dir_listing(h) for name, h in hosts.hosts.items()}
    for name, h in hosts.hosts.items():
        assert after[name] - {h.lock_path.name} == listings[name]
    await settled(stack)


# -- failed / rolled_back --------------------------------------------------------------------


async def test_a_candidate_refused_by_validation_fails_and_leaves_both_hosts_alone(
    sample_hosts: LocalHosts, serve_on: ServeOn
) -> None:
    sample_hosts.hosts[PRIMARY].set_marker("fail-validate")
    stack = await serve_on(sample_hosts)
    before = stack.live()
    request_id = new_request_id("failed")

    reply = await stack.request(modify_body(request_id), "request.modify")

    checked = await stack.tap.next_checked()
    assert checked.message.routing_key == "event.modify.failed"
    assert reply == checked.event
    assert reply.id == f"{request_id}/failed"
    assert reply.type == "net.dhcp.failover.modify.failed"
    error = reply.data.error
    assert reply.data.outcome == "failed" and error is not None
    assert (error.code, error.server, error.phase) == ("validation_failed", PRIMARY, "validate")
    assert "fail-validate marker" in error.message
    assert error.detail["file"] == str(stack.primary.config_path)
    assert [(s.name, s.state, s.restarted) for s in reply.data.servers] == [
        (PRIMARY, "old", False),
        (SECONDARY, "old", False),
    ]
    assert_untouched(sample_hosts, before)
    await settled(stack)


async def test_a_restart_failure_on_the_secondary_rolls_back_both_hosts_through_the_queue(
    sample_hosts: LocalHosts, serve_on: ServeOn
) -> None:
    order = record_restart_order(sample_hosts)
    fail_restart_once(sample_hosts, SECONDARY)
    stack = await serve_on(sample_hosts)
    before = stack.live()
    request_id = new_request_id("rolled-back")

    reply = await stack.request(modify_body(request_id), "request.modify")

    checked = await stack.tap.next_checked()
    assert checked.message.routing_key == "event.modify.rolled_back"
    assert reply == checked.event
    assert reply.id == f"{request_id}/rolled_back"
    assert reply.type == "net.dhcp.failover.modify.rolled_back"
    error = reply.data.error
    assert reply.data.outcome == "rolled_back" and error is not None
    assert (error.code, error.server, error.phase) == ("command_failed", SECONDARY, "commit")
    assert [(s.name, s.state, s.restarted) for s in reply.data.servers] == [
        (PRIMARY, "old", True),
        (SECONDARY, "old", True),
    ]
    # Byte-identical to before, and each host was restarted on its old file again: the
    # primary came up on the new file and back, the secondary failed on it and came back.
    assert stack.live() == before
    assert stack.primary.restarts() == [
        Restart("ok", sha(PRIMARY_AFTER)),
        Restart("ok", sha(PRIMARY_CONF)),
    ]
    assert stack.secondary.restarts() == [
        Restart("failed", sha(SECONDARY_AFTER)),
        Restart("ok", sha(SECONDARY_CONF)),
    ]
    assert restart_order(order) == [PRIMARY, SECONDARY, SECONDARY, PRIMARY]
    assert not stack.secondary.marker_path("fail-restart").exists()  # it failed exactly once
    await change_ended(stack.primary, stack.secondary)
    for host in (stack.primary, stack.secondary):
        files = change_files(host)
        assert files["temps"] == files["journals"] == []
    await settled(stack)


# -- idempotency -----------------------------------------------------------------------------


def same_outcome(a: ResultEvent, b: ResultEvent) -> None:
    """Two events for one request: identical but for ``time`` and the durations."""
    assert a.model_dump(exclude={"time", "data"}) == b.model_dump(exclude={"time", "data"})
    assert without_durations(a.data) == without_durations(b.data)


async def test_a_request_id_published_twice_is_applied_once_and_answered_twice_alike(
    sample_hosts: LocalHosts, serve_on: ServeOn
) -> None:
    stack = await serve_on(sample_hosts)
    request_id = new_request_id("twice")
    body = modify_body(request_id)

    first = await stack.request(body, "request.modify")
    second = await stack.request(body, "request.modify")

    events = [(await stack.tap.next_checked()).event for _ in range(2)]
    await stack.tap.assert_quiet(0.3)
    assert events == [first, second]
    assert first.id == second.id == f"{request_id}/succeeded"
    same_outcome(first, second)
    assert [s.changed for s in second.data.servers] == [True, True]  # the change it made
    assert stack.primary.config_bytes() == PRIMARY_AFTER.encode()
    assert stack.secondary.config_bytes() == SECONDARY_AFTER.encode()
    assert stack.primary.restarts() == [Restart("ok", sha(PRIMARY_AFTER))]
    assert stack.secondary.restarts() == [Restart("ok", sha(SECONDARY_AFTER))]
    await settled(stack)


async def test_two_copies_of_a_request_delivered_together_are_applied_once_and_answered_alike(
    sample_hosts: LocalHosts, serve_on: ServeOn, broker_settings: Settings
) -> None:
    # Both copies are queued before the worker starts, so it takes them at once (prefetch and
    # concurrency > 1), as after a publisher's retry or with two workers on one queue.
    request_id = new_request_id("together")
    body = modify_body(request_id)
    for _ in range(2):
        await publish_request(broker_settings, body, "request.modify")
    stack = await serve_on(sample_hosts)

    first, second = [(await stack.tap.next_checked(within=30)).event for _ in range(2)]
    await stack.tap.assert_quiet(0.3)
    assert first.id == second.id == f"{request_id}/succeeded"
    same_outcome(first, second)
    assert stack.primary.config_bytes() == PRIMARY_AFTER.encode()
    assert stack.secondary.config_bytes() == SECONDARY_AFTER.encode()
    assert stack.primary.restarts() == [Restart("ok", sha(PRIMARY_AFTER))]
    assert stack.secondary.restarts() == [Restart("ok", sha(SECONDARY_AFTER))]
    await settled(stack)


@pytest.fixture
async def proxy(broker_settings: Settings) -> AsyncIterator[TcpProxy]:
    """A cuttable TCP proxy in front of the broker; asked for before ``serve_on``, so it
    outlives the worker connected through it."""
    proxy = await TcpProxy.to(broker_settings.amqp_url)
    try:
        yield proxy
    finally:
        await proxy.close()


async def test_a_blip_during_a_long_commit_still_gives_the_request_one_outcome(
    sample_hosts: LocalHosts, proxy: TcpProxy, serve_on: ServeOn, broker_settings: Settings
) -> None:
    # The worker's AMQP connection drops while the secondary's restart (3 s) outlasts the
    # lock timeout (1 s): the broker redelivers the request to the reconnected worker while
    # its first run still holds the locks. The copy must answer with that run's outcome, not
    # time out on the locks and publish failed/lock_timeout for the same request id.
    begun = slow_restart(sample_hosts, SECONDARY, 3.0)
    url = proxy.url(broker_settings.amqp_url, reconnect_interval="0.2")
    stack = await serve_on(sample_hosts, amqp_url=url, lock_timeout=1.0)
    request_id = new_request_id("blip")
    await publish_request(broker_settings, modify_body(request_id), "request.modify")
    deadline = time.monotonic() + 30
    while not begun.exists():
        assert time.monotonic() < deadline, "the secondary's restart never began"
        await asyncio.sleep(0.05)
    proxy.cut()

    ids = [(await stack.tap.next_checked(within=30)).event.id]
    with contextlib.suppress(AssertionError, TimeoutError):  # the first delivery's answer
        ids.append((await stack.tap.next_checked(within=5)).event.id)
    await stack.tap.assert_quiet(1.0)

    assert set(ids) == {f"{request_id}/succeeded"}, ids
    assert proxy.cuts == 1 and proxy.accepted >= 2  # it did reconnect
    assert stack.secondary.restarts() == [Restart("ok", sha(SECONDARY_AFTER))]
    await settled(stack)


async def test_latin1_configs_with_a_key_beside_the_peer_get_their_event_and_keep_their_bytes(
    local_hosts: LocalHostsFactory, serve_on: ServeOn
) -> None:
    # A Latin-1 comment on the line the modify changes, and a key block right above the peer
    # block: the event must be encodable (U+FFFD, flagged), show no secret, the files keep
    # every byte but the edited value, and the worker answers the next request too.
    key = b'key omapi-key {\n  algorithm hmac-md5;\n  secret "c2VjcmV0LWJ5dGVz";\n}\n'
    configs: dict[str, bytes] = {}
    for name, text in sample_configs().items():
        data = text.encode().replace(b"  mclt 3600;", b"  mclt 3600;  # Standort M\xfcnchen")
        configs[name] = data.replace(b'failover peer "', key + b'failover peer "', 1)
    hosts = local_hosts(configs, addresses=SAMPLE_ADDRESSES)
    stack = await serve_on(hosts)

    event = await stack.request(modify_body(new_request_id("latin1")), "request.modify")
    written = stack.primary.config_bytes()
    later = await stack.request(modify_body(new_request_id("after"), Mclt=900), "request.modify")

    assert event.data.outcome.value == "succeeded", event.data.error
    primary = event.data.servers[0]
    assert primary.diffNonUtf8 and "Standort M\ufffdnchen" in primary.diff
    assert "c2VjcmV0LWJ5dGVz" not in event.to_json().decode()
    expected = configs[PRIMARY].replace(b"mclt 3600;", b"mclt 1800;")
    assert written == expected.replace(b"port 647;", b"port 648;")  # the other bytes kept
    assert later.data.outcome.value == "succeeded", later.data.error
    await settled(stack)
