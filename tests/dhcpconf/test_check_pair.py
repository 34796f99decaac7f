"""Pair checks: each violation is its own precise rejection, including the ones dhcpd accepts."""

from __future__ import annotations

import pytest

from tests.dhcpconf.conftest import Dhcpd
from tests.dhcpconf.corpus import MCLT_ON_SECONDARY_PAIR, PAIRS, CorpusCase
from tests.dhcpconf.pairs import MAIN, PRIMARY, SECONDARY, one
from worker.dhcpconf import check_pair
from worker.errors import PairMismatch, PeerNotFound, Rejected, RoleMismatch


def rejection(primary: str, secondary: str) -> Rejected:
    with pytest.raises(Rejected) as err:
        check_pair(one(primary), one(secondary, "/srv/secondary.conf"), "fo")
    return err.value


def test_a_well_formed_pair_passes() -> None:
    check_pair(one(PRIMARY), one(SECONDARY), "fo")


@pytest.mark.parametrize(("primary", "secondary"), PAIRS, ids=[p.id for p, _ in PAIRS])
def test_each_real_pair_of_the_fixtures_passes(primary: CorpusCase, secondary: CorpusCase) -> None:
    assert primary.peer == secondary.peer
    assert check_pair(primary.config_set(), secondary.config_set(), primary.peer) == []


def test_the_campus_pair_passes_with_a_warning_for_mclt_on_its_secondary() -> None:
    primary, secondary = (c.config_set() for c in MCLT_ON_SECONDARY_PAIR)
    [warning] = check_pair(primary, secondary, "campus")
    assert (warning.code, warning.line, warning.role) == ("mclt_on_secondary", 34, "secondary")


@pytest.mark.parametrize("side", ["primary", "secondary"])
def test_a_peer_missing_on_one_side_is_peer_not_found_naming_that_side(side: str) -> None:
    texts = {"primary": PRIMARY, "secondary": SECONDARY}
    texts[side] = texts[side].replace('"fo"', '"other"')
    err = rejection(texts["primary"], texts["secondary"])
    assert isinstance(err, PeerNotFound) and err.code == "peer_not_found"
    assert f"not declared on the {side}" in err.message and "'other'" in err.message


def test_a_missing_role_is_a_role_mismatch() -> None:
    err = rejection(PRIMARY, SECONDARY.replace("  secondary;\n", ""))
    assert isinstance(err, RoleMismatch) and err.code == "role_missing"
    assert err.detail["file"] == "/srv/secondary.conf" and err.detail["line"] == 1


def test_two_primaries_are_not_complementary() -> None:
    err = rejection(PRIMARY, SECONDARY.replace("secondary;", "primary;"))
    assert isinstance(err, RoleMismatch) and err.code == "roles_not_complementary"


def test_swapped_roles_are_reported_as_swapped() -> None:
    err = rejection(
        PRIMARY.replace("  primary;", "  secondary;"),
        SECONDARY.replace("  secondary;", "  primary;"),
    )
    assert isinstance(err, RoleMismatch) and err.code == "roles_swapped"


def test_a_missing_peer_address_is_rejected() -> None:
    err = rejection(PRIMARY.replace("  peer address 10.0.0.2;\n", ""), SECONDARY)
    assert err.code == "peer_address_missing"


def test_addresses_that_do_not_mirror_each_other_are_a_pair_mismatch() -> None:
    err = rejection(PRIMARY, SECONDARY.replace("peer address 10.0.0.1", "peer address 10.0.0.9"))
    assert isinstance(err, PairMismatch) and err.code == "address_mismatch"
    assert "10.0.0.9" in err.message and err.detail["line"] == 3


def test_ports_that_do_not_mirror_each_other_are_a_pair_mismatch() -> None:
    err = rejection(PRIMARY, SECONDARY.replace("  port 847;", "  port 848;"))
    assert err.code == "port_mismatch" and "848" in err.message


def test_an_absent_port_counts_as_dhcpds_default_647() -> None:
    check_pair(one(PRIMARY.replace("  port 647;\n", "")), one(SECONDARY), "fo")
    err = rejection(
        PRIMARY.replace("  port 647;\n", ""), SECONDARY.replace("peer port 647", "peer port 700")
    )
    assert err.code == "port_mismatch"


def test_split_on_the_secondary_is_rejected() -> None:
    err = rejection(PRIMARY, SECONDARY.replace("  secondary;\n", "  secondary;\n  split 128;\n"))
    assert err.code == "split_on_secondary"


def test_hba_on_the_secondary_is_rejected() -> None:
    hba = "  hba " + ":".join(["ff"] * 16 + ["00"] * 16) + ";\n"
    err = rejection(PRIMARY, SECONDARY.replace("  secondary;\n", "  secondary;\n" + hba))
    assert err.code == "hba_on_secondary"


def test_a_primary_without_split_or_hba_is_rejected() -> None:
    assert rejection(PRIMARY.replace("  split 128;\n", ""), SECONDARY).code == "split_missing"


def test_a_primary_without_mclt_is_rejected() -> None:
    assert rejection(PRIMARY.replace("  mclt 1800;\n", ""), SECONDARY).code == "mclt_missing"


def test_a_split_above_255_is_rejected() -> None:
    assert (
        rejection(PRIMARY.replace("split 128", "split 256"), SECONDARY).code == "split_out_of_range"
    )


def test_a_malformed_hba_is_rejected() -> None:
    err = rejection(PRIMARY.replace("split 128", "hba ff:ff"), SECONDARY)
    assert err.code == "hba_invalid"


def test_a_value_that_is_not_a_number_is_rejected() -> None:
    err = rejection(PRIMARY, SECONDARY.replace("max-unacked-updates 10", "max-unacked-updates x"))
    assert err.code == "value_not_numeric" and err.detail["line"] == 8


def test_every_violation_is_listed_in_the_detail() -> None:
    err = rejection(
        PRIMARY.replace("split 128", "split 999"), SECONDARY.replace("  port 847;", "  port 848;")
    )
    codes = [v["code"] for v in err.detail["violations"]]
    assert codes == ["split_out_of_range", "port_mismatch"]


# -- wrong pairs that dhcpd itself accepts: the pair check is the only guard -----------------

HBA = ":".join(["ff"] * 16 + ["00"] * 16)
ACCEPTED_BY_DHCPD = {
    "both secondary": (
        PRIMARY.replace("  primary;", "  secondary;").replace("  mclt 1800;\n  split 128;\n", ""),
        SECONDARY,
        RoleMismatch,
        "roles_not_complementary",
        2,
    ),
    "split and hba together": (
        PRIMARY.replace("  split 128;\n", f"  split 128;\n  hba {HBA};\n"),
        SECONDARY,
        PairMismatch,
        "split_and_hba",
        11,
    ),
    "port 70000": (
        PRIMARY.replace("  port 647;", "  port 70000;"),
        SECONDARY.replace("peer port 647", "peer port 70000"),
        PairMismatch,
        "port_out_of_range",
        4,
    ),
    "negative mclt": (
        PRIMARY.replace("mclt 1800", "mclt -5"),
        SECONDARY,
        PairMismatch,
        "mclt_negative",
        9,
    ),
    "missing address": (
        PRIMARY.replace("  address 10.0.0.1;\n", ""),
        SECONDARY,
        PairMismatch,
        "address_missing",
        1,
    ),
    "negative max-response-delay": (
        PRIMARY.replace("max-response-delay 60", "max-response-delay -1"),
        SECONDARY,
        PairMismatch,
        "value_out_of_range",
        7,
    ),
}


@pytest.mark.integration
@pytest.mark.parametrize(
    ("primary", "secondary", "kind", "code", "line"),
    ACCEPTED_BY_DHCPD.values(),
    ids=ACCEPTED_BY_DHCPD.keys(),
)
def test_a_wrong_pair_that_dhcpd_accepts_is_still_rejected_with_its_own_code(
    dhcpd: Dhcpd, primary: str, secondary: str, kind: type[Rejected], code: str, line: int
) -> None:
    for text in (primary, secondary):
        rc, output = dhcpd.check({MAIN: text}, MAIN)
        assert rc == 0, output
    err = rejection(primary, secondary)
    assert type(err) is kind and err.code == code
    assert err.detail["line"] == line and f":{line}: " in err.message
