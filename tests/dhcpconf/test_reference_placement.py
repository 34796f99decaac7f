"""Where dhcpd takes a ``failover peer NAME;`` reference, and how it must be written.

Checked against the real dhcpd 4.4: a reference counts for the peer only inside a pool, and
there its name must be a quoted string; directly in a shared-network it is taken (unquoted
too) but makes no pool the peer's, so a peer referenced only there "has no referring pools";
anywhere else dhcpd refuses it. The engine must judge each as dhcpd does: never edit a file
dhcpd rejects (a remove would "fix" it), never refuse one dhcpd takes.
"""

from __future__ import annotations

import pytest

from tests.dhcpconf.conftest import Dhcpd
from worker.dhcpconf import ConfigSet, PeerSettings, modify, remove
from worker.errors import ConfigError
from worker.messages import DeconfigureAction

MAIN = "/etc/dhcp/dhcpd.conf"
PEER = (
    'failover peer "p" { primary; address 10.0.0.1; port 647; peer address 10.0.0.2;\n'
    "  peer port 647; mclt 60; split 128; }\n"
)
SUBNET = "subnet 10.0.0.0 netmask 255.255.255.0"

REFUSED = {
    "peer_without_pools": PEER
    + f'shared-network net {{ failover peer "p"; {SUBNET} {{ pool {{ range 10.0.0.5 10.0.0.9; }} '
    "} }\n",
    "peer_name_not_quoted": PEER
    + f"{SUBNET} {{ pool {{ failover peer p; range 10.0.0.5 10.0.0.9; }} }}\n",
    "peer_reference_misplaced": PEER
    + f'{SUBNET} {{ failover peer "p"; pool {{ failover peer "p"; range 10.0.0.5 10.0.0.9; }} }}\n',
}
TAKEN = {
    "network-and-pool": PEER
    + f'shared-network net {{ failover peer "p"; {SUBNET} {{ pool {{ failover peer "p"; '
    "range 10.0.0.5 10.0.0.9; } } }\n",
    "network-unquoted": PEER
    + f'shared-network net {{ failover peer p; {SUBNET} {{ pool {{ failover peer "p"; '
    "range 10.0.0.5 10.0.0.9; } } }\n",
}


@pytest.mark.parametrize("code", sorted(REFUSED))
def test_a_reference_dhcpd_refuses_is_refused_by_every_edit(dhcpd: Dhcpd, code: str) -> None:
    text = REFUSED[code]
    rc, output = dhcpd.check({MAIN: text}, MAIN)
    assert rc != 0, output
    cs = ConfigSet.parse({MAIN: text}, MAIN)

    with pytest.raises(ConfigError) as modified:
        modify(cs, "p", PeerSettings(mclt=120))
    with pytest.raises(ConfigError) as removed:
        remove(cs, ["p"], DeconfigureAction.disable)

    assert modified.value.code == removed.value.code == code
    assert modified.value.line is not None


@pytest.mark.parametrize("name", sorted(TAKEN))
def test_a_reference_dhcpd_takes_can_be_edited_and_still_passes(dhcpd: Dhcpd, name: str) -> None:
    text = TAKEN[name]
    assert dhcpd.check({MAIN: text}, MAIN)[0] == 0
    cs = ConfigSet.parse({MAIN: text}, MAIN)

    edited = modify(cs, "p", PeerSettings(mclt=120))[MAIN]
    removed = remove(cs, ["p"], DeconfigureAction.disable)[MAIN]

    assert "mclt 120;" in edited and dhcpd.check({MAIN: edited}, MAIN)[0] == 0
    assert "failover" not in removed and dhcpd.check({MAIN: removed}, MAIN)[0] == 0
