"""The failover model: every peer with its role and statements, every pool that uses it."""

from __future__ import annotations

import pytest

from tests.dhcpconf.corpus import CorpusCase, case, config_text
from tests.dhcpconf.pairs import MAIN, one
from worker.dhcpconf import ConfigSet
from worker.errors import ConfigError, PeerNotFound

POOL = (
    'subnet 10.0.0.0 netmask 255.0.0.0 {\n  pool {\n    failover peer "%s";\n'
    "    range 10.0.0.5 10.0.0.9;\n  }\n}\n"
)


def test_each_corpus_case_exposes_its_peer_with_the_expected_role(case: CorpusCase) -> None:
    peer = case.config_set().peer(case.peer)
    assert peer.role == case.role and peer.role_declared
    assert peer.pools, "every accepted corpus peer is used by at least one pool"


def test_the_campus_primary_reports_every_statement_normalised() -> None:
    peer = one(config_text("campus-primary.conf")).peer("campus")
    assert peer.params == {
        "address": "10.10.0.1",
        "port": "51000",
        "peer address": "10.10.0.2",
        "peer port": "51001",
        "max-response-delay": "60",
        "max-unacked-updates": "10",
        "mclt": "1800",
        "hba": ":".join(["ff"] * 16 + ["00"] * 16),
        "load balance max seconds": "3",
    }
    assert (peer.file, peer.line) == (MAIN, 29)


def test_pools_are_reported_with_their_enclosing_scopes() -> None:
    peer = one(config_text("campus-primary.conf")).peer("campus")
    labels = [p.label for p in peer.pools]
    assert labels[0] == "shared-network NORTH-HALL > subnet 10.10.2.0 netmask 255.255.255.0 > pool"
    assert labels[2:] == ["subnet 10.10.0.0 netmask 255.255.255.0 > pool"] * 3
    assert {p.kind for p in peer.pools} == {"pool"}
    assert peer.pools[0].line == 87


def test_every_kind_of_scope_a_pool_can_sit_in_is_labelled() -> None:
    peer = case("scopes-primary").config_set().peer("dc-fo")
    assert [(p.kind, p.label) for p in peer.pools] == [
        ("pool", "shared-network dc-east > subnet 10.70.1.0 netmask 255.255.255.0 > pool"),
        ("pool", "shared-network dc-east > pool"),
        ("shared-network", "shared-network dc-west"),
        ("pool", "shared-network dc-west > subnet 10.71.0.0 netmask 255.255.255.0 > pool"),
        ("pool", "shared-network dc-west > subnet 10.71.1.0 netmask 255.255.255.0 > pool"),
        ("pool", "group > subnet 10.72.0.0 netmask 255.255.255.0 > pool"),
        ("pool", "subnet 192.0.2.0 netmask 255.255.255.0 > pool"),
    ]


def test_statements_beyond_the_common_ones_are_read() -> None:
    text = config_text("office-peer.conf")
    cs = ConfigSet.parse({MAIN: POOL % "office-failover", "/f.conf": text}, MAIN)
    params = cs.peer("office-failover").params
    assert params["auto-partner-down"] == "0"
    assert params["max-lease-misbalance"] == "15"
    assert params["min-balance"] == "60" and params["max-balance"] == "3600"


def test_unquoted_names_and_peers_inside_a_shared_network_are_found() -> None:
    text = (
        "shared-network net {\n  failover peer bare {\n    secondary;\n    address 10.0.0.2;\n"
        "    peer address 10.0.0.1;\n  }\n" + POOL % "bare" + "}\n"
    )
    peer = one(text).peer("bare")
    assert peer.role == "secondary"
    assert peer.pools[0].label.startswith("shared-network net > subnet")


def test_peers_in_a_group_are_found() -> None:
    text = 'group {\n  failover peer "g" {\n    primary;\n  }\n}\n'
    assert one(text).peer("g").role == "primary"


def test_names_are_case_sensitive_and_keywords_are_not() -> None:
    text = 'FAILOVER PEER "Foo" {\n  SECONDARY;\n  Address 10.0.0.2;\n}\n' + POOL % "Foo"
    cs = one(text)
    assert cs.peer("Foo").role == "secondary"
    assert cs.peer("Foo").params == {"address": "10.0.0.2"}
    with pytest.raises(PeerNotFound):
        cs.peer("foo")


def test_a_peer_without_a_role_is_primary_but_says_the_role_was_not_declared() -> None:
    peer = one('failover peer "p" {\n  address 10.0.0.1;\n}\n').peer("p")
    assert (peer.role, peer.role_declared) == ("primary", False)


def test_a_peer_declared_in_the_main_file_gets_pools_from_an_included_file() -> None:
    peer = case("branch-secondary").config_set().peer("branch-fo")
    assert peer.file == MAIN
    assert [(p.file, p.line) for p in peer.pools] == [
        ("/etc/dhcp/dhcpd.pools", 15),
        ("/etc/dhcp/dhcpd.pools", 31),
    ]


def test_a_peer_declared_in_an_included_file_gets_pools_from_the_main_file() -> None:
    peer = case("office-secondary").config_set().peer("office-failover")
    assert (peer.file, peer.role) == ("/etc/dhcp/failover.conf", "secondary")
    assert {p.file for p in peer.pools} == {MAIN} and len(peer.pools) == 2


def test_an_included_file_sits_inside_the_block_that_includes_it() -> None:
    main = 'failover peer "p" {\n  primary;\n}\nshared-network n {\n  include "sub.conf";\n}\n'
    cs = ConfigSet.parse({MAIN: main, "/etc/dhcp/sub.conf": POOL % "p"}, MAIN)
    (pool,) = cs.peer("p").pools
    assert pool.label == "shared-network n > subnet 10.0.0.0 netmask 255.0.0.0 > pool"
    assert pool.file == "/etc/dhcp/sub.conf"


def test_a_shared_network_level_reference_is_reported_as_such() -> None:
    text = 'failover peer "p" {\n  primary;\n}\nshared-network n {\n  failover peer "p";\n}\n'
    (ref,) = one(text).peer("p").pools
    assert (ref.kind, ref.label) == ("shared-network", "shared-network n")


def test_unicode_hyphens_in_a_peer_block_are_a_config_error_at_that_token() -> None:
    with pytest.raises(ConfigError) as err:
        one(config_text("rejected-unicode-hyphens.conf"))
    assert err.value.code == "peer_statement_unrecognised"
    assert (err.value.line, err.value.column) == (36, 91)
    assert "'pasted'" in err.value.message and "max\u2011response\u2011delay" in err.value.message


def test_a_second_declaration_of_the_same_peer_is_a_config_error() -> None:
    text = 'failover peer "p" {\n  primary;\n}\nfailover peer "p" {\n  primary;\n}\n'
    with pytest.raises(ConfigError) as err:
        one(text)
    assert err.value.line == 4 and "redeclaration" in err.value.message


def test_a_peer_state_block_is_not_a_declaration() -> None:
    text = 'failover peer "p" state {\n  my state normal at 1 2020/01/01 00:00:00;\n}\n'
    assert one(text).peers() == {}


def test_an_unknown_peer_is_peer_not_found_naming_the_file() -> None:
    with pytest.raises(PeerNotFound) as err:
        one('failover peer "p" {\n  primary;\n}\n').peer("q")
    assert MAIN in err.value.message and "'p'" in err.value.message


def test_the_main_file_must_be_in_the_set() -> None:
    with pytest.raises(ConfigError):
        ConfigSet.parse({"/a.conf": ""}, "/b.conf")
