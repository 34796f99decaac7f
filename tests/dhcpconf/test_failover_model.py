"""The failover model: every peer with its role and statements, every pool that uses it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.dhcpconf.corpus import CorpusCase, corpus_text
from tests.dhcpconf.pairs import MAIN, one
from worker.dhcpconf import ConfigSet
from worker.errors import ConfigError, PeerNotFound

POOL = (
    'subnet 10.0.0.0 netmask 255.0.0.0 {\n  pool {\n    failover peer "%s";\n'
    "    range 10.0.0.5 10.0.0.9;\n  }\n}\n"
)


def test_each_corpus_case_exposes_its_peer_with_the_expected_role(
    corpus_dir: Path, case: CorpusCase
) -> None:
    peer = case.config_set(corpus_dir).peer(case.peer)
    assert peer.role == case.role and peer.role_declared
    assert peer.pools, "every accepted corpus peer is used by at least one pool"


def test_the_isc_primary_reports_every_statement_normalised(corpus_dir: Path) -> None:
    peer = one(corpus_text(corpus_dir, "isc-dhcp__dhcp-1.conf")).peer("foo")
    assert peer.params == {
        "address": "10.0.0.1",
        "port": "51000",
        "peer address": "10.0.0.1",
        "peer port": "51001",
        "max-response-delay": "60",
        "max-unacked-updates": "10",
        "mclt": "100",
        "hba": ":".join(["ff"] * 16 + ["00"] * 16),
        "load balance max seconds": "2",
    }
    assert (peer.file, peer.line) == (MAIN, 25)


def test_pools_are_reported_with_their_enclosing_scopes(corpus_dir: Path) -> None:
    peer = one(corpus_text(corpus_dir, "isc-dhcp__dhcp-1.conf")).peer("foo")
    labels = [p.label for p in peer.pools]
    assert labels[0] == "shared-network LOCAL > subnet 10.0.2.0 netmask 255.255.255.0 > pool"
    assert labels[2:] == ["subnet 10.0.0.0 netmask 255.255.255.0 > pool"] * 3
    assert {p.kind for p in peer.pools} == {"pool"}
    assert peer.pools[0].line == 108


def test_debops_statements_beyond_the_common_ones_are_read(corpus_dir: Path) -> None:
    text = corpus_text(corpus_dir, "debops__ansible_failovers.conf.rendered.conf")
    cs = ConfigSet.parse({MAIN: POOL % "failover-partner", "/f.conf": text}, MAIN)
    params = cs.peer("failover-partner").params
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


def test_a_peer_declared_in_the_main_file_gets_pools_from_an_included_file(
    corpus_dir: Path,
) -> None:
    cs = ConfigSet.parse(
        {
            MAIN: corpus_text(corpus_dir, "voxpupuli-puppet-dhcp__dhcpd.conf.rendered.conf"),
            "/etc/dhcp/dhcpd.pools": corpus_text(
                corpus_dir, "voxpupuli-puppet-dhcp__dhcpd.pools.rendered.conf"
            ),
        },
        MAIN,
    )
    peer = cs.peer("dhcp-failover")
    assert peer.file == MAIN
    assert [(p.file, p.line) for p in peer.pools] == [
        ("/etc/dhcp/dhcpd.pools", 8),
        ("/etc/dhcp/dhcpd.pools", 24),
    ]


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


def test_unicode_hyphens_in_a_peer_block_are_a_config_error_at_that_token(
    corpus_dir: Path,
) -> None:
    name = "net-isc-dhcpd__40-failover-data.conf"
    with pytest.raises(ConfigError) as err:
        one(corpus_text(corpus_dir, name))
    assert err.value.code == "peer_statement_unrecognised"
    assert (err.value.line, err.value.column) == (28, 105)
    assert "one-line" in err.value.message


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
