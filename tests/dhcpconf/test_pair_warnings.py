"""``mclt`` on the secondary: dhcpd accepts it and uses the primary's, so a change goes ahead,
leaves it exactly as it is and warns ``mclt_on_secondary``."""

from __future__ import annotations

from typing import Any

import pytest

from tests.dhcpconf.corpus import MCLT_ON_SECONDARY_PAIR
from tests.dhcpconf.pairs import MAIN, PRIMARY, SECONDARY, one
from worker.change.plan import plan_modify, plan_remove
from worker.dhcpconf import check_pair
from worker.errors import PairMismatch
from worker.messages import DeconfigureAction, ModifyParams, RemoveParams

SECONDARY_MCLT = SECONDARY.replace("  secondary;\n", "  secondary;\n  mclt 1800;\n")  # line 3


def params(**settings: Any) -> ModifyParams:
    return ModifyParams.model_validate(
        {"Name": "fo", "PrimaryServer": "dhcp1", "SecondaryServer": "dhcp2", **settings}
    )


def test_the_pair_check_passes_and_warns_about_the_secondarys_mclt() -> None:
    [warning] = check_pair(one(PRIMARY), one(SECONDARY_MCLT), "fo")
    assert (warning.code, warning.file, warning.line) == ("mclt_on_secondary", MAIN, 3)
    assert warning.role == "secondary" and "'mclt 1800'" in warning.message


def test_a_sound_pair_has_no_warnings() -> None:
    assert check_pair(one(PRIMARY), one(SECONDARY), "fo") == []


@pytest.mark.parametrize("settings", [{"Mclt": 600}, {"Mclt": 600, "Port": 700}])
def test_a_modify_goes_ahead_and_never_touches_the_secondarys_mclt(
    settings: dict[str, int],
) -> None:
    primary, secondary = plan_modify(params(**settings), one(PRIMARY), one(SECONDARY_MCLT))
    assert "  mclt 600;\n" in primary.after[MAIN]
    assert secondary.after[MAIN].count("mclt") == 1 and "  mclt 1800;\n" in secondary.after[MAIN]
    changed = [line for line in secondary.diff().splitlines() if line[:1] in "+-"]
    assert not [line for line in changed if "mclt" in line]
    assert [(w.code, w.server) for w in secondary.warnings] == [("mclt_on_secondary", "dhcp2")]
    assert primary.warnings == ()
    assert secondary.warnings[0].message.startswith(f"{MAIN}:3: failover peer 'fo'")


@pytest.mark.parametrize(
    "action", list(DeconfigureAction), ids=[a.value for a in DeconfigureAction]
)
def test_a_remove_goes_ahead_and_warns_on_the_secondary(action: DeconfigureAction) -> None:
    """The peer block goes whole on remove (its mclt with it); nothing else names mclt."""
    remove = RemoveParams.model_validate(
        {"Server": "dhcp1", "Name": "fo", "DeconfigureAction": action.value}
    )
    configs = {"dhcp1": one(PRIMARY), "dhcp2": one(SECONDARY_MCLT)}
    primary, secondary = plan_remove(remove, configs, {"fo": ("dhcp1", "dhcp2")})
    assert "failover peer" not in secondary.after[MAIN] and "mclt" not in secondary.after[MAIN]
    assert [w.code for w in secondary.warnings] == ["mclt_on_secondary"]
    assert [w.server for w in secondary.warnings] == ["dhcp2"] and primary.warnings == ()


def test_the_fixture_pair_with_mclt_on_its_secondary_is_modified_with_a_warning() -> None:
    primary_case, secondary_case = MCLT_ON_SECONDARY_PAIR
    p, s = primary_case.config_set(), secondary_case.config_set()
    _, secondary = plan_modify(
        ModifyParams.model_validate(
            {"Name": primary_case.peer, "PrimaryServer": "a", "SecondaryServer": "b", "Mclt": 60}
        ),
        p,
        s,
    )
    assert secondary.after == s.texts()
    assert [w.code for w in secondary.warnings] == ["mclt_on_secondary"]


@pytest.mark.parametrize(
    ("statement", "code"),
    [
        ("  split 128;\n", "split_on_secondary"),
        ("  hba " + "ff:" * 31 + "ff;\n", "hba_on_secondary"),
    ],
)
def test_split_or_hba_on_the_secondary_is_still_rejected_and_mclt_is_no_violation(
    statement: str, code: str
) -> None:
    secondary = SECONDARY_MCLT.replace("  secondary;\n", "  secondary;\n" + statement)
    with pytest.raises(PairMismatch) as err:
        plan_modify(params(Mclt=600), one(PRIMARY), one(secondary))
    assert err.value.code == code
    assert [v["code"] for v in err.value.detail["violations"]] == [code]
