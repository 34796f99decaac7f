"""Before any edit, what dhcpd itself would reject is a ConfigError: never edited, never fixed."""

from __future__ import annotations

import pytest

from tests.dhcpconf.pairs import MAIN, PRIMARY, SECONDARY, one
from worker.dhcpconf import ConfigSet, PeerSettings, modify, remove
from worker.dhcpconf.checks import validate
from worker.errors import ConfigError
from worker.messages import DeconfigureAction


def refusal(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        validate(one(text))
    return err.value


def test_the_well_formed_files_pass() -> None:
    validate(one(PRIMARY))
    validate(one(SECONDARY))


def test_a_pool_naming_an_undeclared_peer_is_refused_at_that_pool() -> None:
    err = refusal(PRIMARY.replace('    failover peer "fo";', '    failover peer "Fo";'))
    assert err.code == "undeclared_peer"
    assert (err.file, err.line, err.column) == (MAIN, 15, 5)


def test_a_peer_no_pool_refers_to_is_refused() -> None:
    err = refusal(PRIMARY.split("subnet")[0])
    assert err.code == "peer_without_pools" and (err.line, err.column) == (1, 1)


def test_pools_in_an_included_file_count_for_the_peer() -> None:
    head, pools = PRIMARY.split("subnet", 1)
    validate(
        ConfigSet.parse(
            {MAIN: head + 'include "p.conf";\n', "/etc/dhcp/p.conf": "subnet" + pools}, MAIN
        )
    )


@pytest.mark.parametrize(
    ("text", "code", "line"),
    [
        (PRIMARY.replace("  split 128;\n", ""), "split_missing", 1),
        (PRIMARY.replace("  mclt 1800;\n", ""), "mclt_missing", 1),
        (PRIMARY.replace("  peer address 10.0.0.2;\n", ""), "peer_address_missing", 1),
        (PRIMARY.replace("port 647", "port 6x"), "value_not_numeric", 4),
        (PRIMARY.replace("split 128", "split 300"), "split_out_of_range", 10),
        (PRIMARY.replace("split 128", "hba ff"), "hba_invalid", 10),
        (
            SECONDARY.replace("  secondary;\n", "  secondary;\n  split 1;\n"),
            "split_on_secondary",
            3,
        ),
    ],
)
def test_each_problem_dhcpd_rejects_is_refused_with_its_code_and_line(
    text: str, code: str, line: int
) -> None:
    err = refusal(text)
    assert (err.code, err.line) == (code, line)
    assert "dhcpd rejects this too" in err.message


@pytest.mark.parametrize(
    "text",
    [
        PRIMARY.replace("mclt 1800", "mclt -5"),
        PRIMARY.replace("port 647", "port 70000"),
        PRIMARY.replace("  address 10.0.0.1;\n", ""),
        SECONDARY.replace("  secondary;\n", "  secondary;\n  mclt 60;\n"),
    ],
)
def test_problems_dhcpd_accepts_are_left_to_the_pair_check(text: str) -> None:
    validate(one(text))


def test_modify_and_remove_refuse_a_file_dhcpd_rejects() -> None:
    cs = one(PRIMARY.replace("  split 128;\n", ""))
    with pytest.raises(ConfigError):
        modify(cs, "fo", PeerSettings(mclt=5))
    with pytest.raises(ConfigError):
        remove(cs, ["fo"], DeconfigureAction.none)
