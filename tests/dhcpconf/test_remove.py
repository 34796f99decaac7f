"""Remove: the peer goes on both servers; the secondary's scopes follow DeconfigureAction."""

from __future__ import annotations

import re

import pytest

from tests.dhcpconf.corpus import CASES, CorpusCase
from tests.dhcpconf.pairs import MAIN, PRIMARY, SECONDARY, one
from worker.dhcpconf import ConfigSet, parse, remove
from worker.dhcpconf.tree import Block
from worker.errors import ConfigError, PeerNotFound
from worker.messages import DeconfigureAction

ACTIONS = list(DeconfigureAction)

SECONDARY_SCOPES = """\
failover peer "fo" {
  secondary;
  address 10.0.0.2;
  peer address 10.0.0.1;
}

shared-network both {
  subnet 10.1.0.0 netmask 255.255.0.0 {
    pool {
      failover peer "fo";
      range 10.1.0.10 10.1.0.99;
    }
  }
  subnet 10.2.0.0 netmask 255.255.0.0 {
    option routers 10.2.0.1;
  }
}

shared-network only-failover {
  subnet 10.3.0.0 netmask 255.255.0.0 {
    pool {
      failover peer "fo";
      range 10.3.0.10 10.3.0.99;
    }
  }
}

shared-network direct-pool {
  subnet 10.4.0.0 netmask 255.255.0.0 {
  }
  pool {
    failover peer "fo";
    range 10.4.0.10 10.4.0.99;
  }
}

subnet 10.5.0.0 netmask 255.255.0.0 {
  pool {
    failover peer "fo";
    range 10.5.0.10 10.5.0.99;
  }
}
"""


def no_trace_of(name: str, text: str) -> bool:
    return re.search(rf'failover\s+peer\s+"?{re.escape(name)}"?\s*[;{{]', text) is None


def test_on_the_primary_the_block_and_every_reference_go_and_the_pools_stay() -> None:
    after = remove(one(PRIMARY), ["fo"], DeconfigureAction.delete)[MAIN]
    assert after == (
        "subnet 10.0.0.0 netmask 255.255.255.0 {\n  pool {\n"
        "    range 10.0.0.10 10.0.0.99;\n  }\n}\n"
    )


def test_disable_turns_each_secondary_reference_into_deny_all_clients_in_place() -> None:
    after = remove(one(SECONDARY), ["fo"], DeconfigureAction.disable)[MAIN]
    assert after == (
        "subnet 10.0.0.0 netmask 255.255.255.0 {\n  pool {\n    deny all clients;\n"
        "    range 10.0.0.10 10.0.0.99;\n  }\n}\n"
    )


def test_disable_does_not_add_a_second_deny_all_clients() -> None:
    text = SECONDARY.replace("    range", "    deny all clients;\n    range")
    after = remove(one(text), ["fo"], DeconfigureAction.disable)[MAIN]
    assert after.count("deny all clients;") == 1 and no_trace_of("fo", after)


def test_none_removes_only_the_references_on_the_secondary() -> None:
    after = remove(one(SECONDARY), ["fo"], DeconfigureAction.none)[MAIN]
    assert after == remove(one(PRIMARY), ["fo"], DeconfigureAction.none)[MAIN]


def test_delete_removes_the_scopes_that_used_the_peer_and_emptied_shared_networks() -> None:
    after = remove(one(SECONDARY_SCOPES), ["fo"], DeconfigureAction.delete)[MAIN]
    assert (
        after
        == """\
shared-network both {
  subnet 10.2.0.0 netmask 255.255.0.0 {
    option routers 10.2.0.1;
  }
}

shared-network direct-pool {
  subnet 10.4.0.0 netmask 255.255.0.0 {
  }
}
"""
    )


def test_delete_refuses_a_pool_that_is_neither_in_a_subnet_nor_a_shared_network() -> None:
    text = SECONDARY.replace("subnet 10.0.0.0 netmask 255.255.255.0 {", "group {")
    with pytest.raises(ConfigError) as err:
        remove(one(text), ["fo"], DeconfigureAction.delete)
    assert "group" in err.value.message and err.value.line == 12


def test_several_names_are_removed_in_one_call() -> None:
    second = (
        SECONDARY.replace('"fo"', '"fo2"')
        .replace("10.0.0.", "10.9.0.")
        .replace("subnet 10.0.0.0", "subnet 10.9.0.0")
    )
    cs = one(SECONDARY + second)
    after = remove(cs, ["fo", "fo2"], DeconfigureAction.disable)[MAIN]
    assert no_trace_of("fo", after) and no_trace_of("fo2", after)
    assert after.count("deny all clients;") == 2
    assert ConfigSet.parse({MAIN: after}, MAIN).peers() == {}


def test_other_peers_and_their_pools_are_untouched() -> None:
    other = PRIMARY.replace('"fo"', '"keep"').replace("subnet 10.0.0.0", "subnet 10.7.0.0")
    after = remove(one(PRIMARY + other), ["fo"], DeconfigureAction.none)[MAIN]
    assert after.endswith(other) and set(one(after).peers()) == {"keep"}


def test_an_unknown_name_is_peer_not_found() -> None:
    with pytest.raises(PeerNotFound):
        remove(one(PRIMARY), ["fo", "missing"], DeconfigureAction.none)


# -- removing lines cleanly -----------------------------------------------------------------


def test_a_block_between_blank_lines_leaves_a_single_blank_line() -> None:
    text = "a;\n\n" + PRIMARY.replace("}\nsubnet", "}\n\nsubnet")
    after = remove(one(text), ["fo"], DeconfigureAction.none)[MAIN]
    assert after.startswith("a;\n\nsubnet 10.0.0.0")


def test_a_block_at_the_end_of_the_file_leaves_no_trailing_blank_line() -> None:
    peer_block, pools = PRIMARY.split("subnet", 1)
    after = remove(one("subnet" + pools + "\n" + peer_block), ["fo"], DeconfigureAction.none)
    assert after[MAIN].endswith("    range 10.0.0.10 10.0.0.99;\n  }\n}\n")


def test_a_comment_trailing_a_removed_statement_goes_with_it() -> None:
    text = PRIMARY.replace('    failover peer "fo";', '    failover peer "fo";  # load shared')
    after = remove(one(text), ["fo"], DeconfigureAction.none)[MAIN]
    assert "load shared" not in after and "  pool {\n    range" in after


def test_a_statement_sharing_its_line_keeps_its_neighbours() -> None:
    text = PRIMARY.replace('    failover peer "fo";\n    range', '    failover peer "fo"; range')
    after = remove(one(text), ["fo"], DeconfigureAction.none)[MAIN]
    assert "  pool {\n    range 10.0.0.10 10.0.0.99;\n  }" in after
    text = PRIMARY.replace('    failover peer "fo";\n', '    deny bootp; failover peer "fo";\n')
    after = remove(one(text), ["fo"], DeconfigureAction.none)[MAIN]
    assert "  pool {\n    deny bootp;\n    range" in after


def test_crlf_lines_are_removed_whole() -> None:
    text = PRIMARY.replace("\n", "\r\n")
    after = remove(one(text), ["fo"], DeconfigureAction.none)[MAIN]
    assert after == remove(one(PRIMARY), ["fo"], DeconfigureAction.none)[MAIN].replace("\n", "\r\n")


# -- across files and over the corpus -------------------------------------------------------


def test_delete_edits_the_included_file_that_holds_the_scopes() -> None:
    case = next(c for c in CASES if c.id == "branch-secondary")
    cs = case.config_set()
    after = remove(cs, [case.peer], DeconfigureAction.delete)
    pools = after["/etc/dhcp/dhcpd.pools"]
    assert "subnet" not in pools and pools.startswith("# branch-pools.conf -- ")
    assert "failover peer" not in after[MAIN] and "include" in after[MAIN]


def test_delete_keeps_a_pool_less_subnet_and_a_group_and_drops_an_emptied_shared_network() -> None:
    case = next(c for c in CASES if c.id == "scopes-secondary")
    doc = parse(remove(case.config_set(), [case.peer], DeconfigureAction.delete)[MAIN])
    blocks = [n for n in doc.items if isinstance(n, Block)]
    assert [(doc.label(b), [doc.label(n) for n in b.body]) for b in blocks] == [
        (
            "shared-network dc-east",
            ['option domain-name "east.example.net"', "subnet 10.70.0.0 netmask 255.255.255.0"],
        ),
        ("group", ['option domain-name "lab.example.net"']),
    ]


@pytest.mark.parametrize("action", ACTIONS, ids=[a.value for a in ACTIONS])
def test_remove_leaves_no_reference_to_the_name(
    case: CorpusCase, action: DeconfigureAction
) -> None:
    cs = case.config_set()
    after = remove(cs, [case.peer], action)
    assert all(no_trace_of(case.peer, text) for text in after.values())
    candidate = ConfigSet.parse(after, MAIN)
    assert case.peer not in candidate.peers() and not candidate.references


PRIMARY_CASES = [c for c in CASES if c.role == "primary"]


@pytest.mark.parametrize("action", ACTIONS, ids=[a.value for a in ACTIONS])
@pytest.mark.parametrize("primary", PRIMARY_CASES, ids=[c.id for c in PRIMARY_CASES])
def test_on_a_primary_every_action_only_drops_the_references(
    primary: CorpusCase, action: DeconfigureAction
) -> None:
    case = primary
    cs = case.config_set()
    assert remove(cs, [case.peer], action) == remove(cs, [case.peer], DeconfigureAction.none)
