"""Which pairs a rollout takes, read from real servers' configs over SSH (real sshd)."""

from __future__ import annotations

import pytest

from tests.fixtures.sshd import LocalHostsFactory
from tests.rollout.conftest import pair_configs, pair_names
from worker.rollout.discovery import Pair, Selection, discover
from worker.settings import Settings
from worker.transport import SshFleet, load_inventory

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def pair(i: int, relationship: str) -> Pair:
    a, b = pair_names(i)
    return Pair(a, relationship, b)


async def test_pairs_are_the_relationships_with_both_peers_in_the_inventory(
    local_hosts: LocalHostsFactory,
) -> None:
    configs, addresses = pair_configs(2, "alpha")
    for first, relationship in ((2, "beta"), (3, "gamma")):
        more, more_addresses = pair_configs(1, relationship, first=first)
        configs.update(more)
        addresses.update(more_addresses)
    orphan_configs, orphan_addresses = pair_configs(1, "delta", first=4)
    orphan = pair_names(4)[0]  # its secondary is not in this inventory
    configs[orphan] = orphan_configs[orphan]
    addresses[orphan] = orphan_addresses[orphan]
    hosts = local_hosts(configs, addresses=addresses, plain_login=True)
    unreadable = pair_names(3)[0]
    hosts.hosts[unreadable].config_path.unlink()
    inventory = load_inventory(hosts.inventory_path)

    async with SshFleet(inventory, Settings(connect_timeout=5)) as fleet:
        everything = await discover(fleet, inventory.servers, Selection())
        betas = await discover(fleet, inventory.servers, Selection(relationships=("beta",)))
        by_glob = await discover(fleet, inventory.servers, Selection(servers=("dhcp01b.*",)))
        both = await discover(
            fleet, inventory.servers, Selection(("alpha", "gamma"), ("dhcp0[13]a*",))
        )

    # The gamma pair is found from its secondary although its primary cannot be read.
    expected = [pair(0, "alpha"), pair(1, "alpha"), pair(2, "beta"), pair(3, "gamma")]
    assert everything.pairs == expected
    assert everything.servers_read == len(configs) - 1
    assert [(u.server, u.code) for u in everything.unread] == [(unreadable, "config_error")]
    assert [(s.server, s.relationship) for s in everything.skipped] == [(orphan, "delta")]
    assert "192.0.2.109 is not in the inventory" in everything.skipped[0].reason
    assert betas.pairs == [pair(2, "beta")]
    assert by_glob.pairs == [pair(1, "alpha")]  # a glob on either peer
    assert both.pairs == [pair(1, "alpha"), pair(3, "gamma")]  # filters combine
    # A glob reads only the servers it matches, unless one of them cannot be read: then the
    # gamma pair can be seen only from its other side, and everything is read.
    assert (by_glob.servers_read, by_glob.skipped, by_glob.widened) == (1, [], False)
    assert (both.servers_read, both.widened) == (everything.servers_read, True)
    assert not everything.widened  # nothing left to read
