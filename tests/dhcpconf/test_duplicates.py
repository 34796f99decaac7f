"""A statement written twice in a peer block: the last one counts, as in dhcpd."""

from __future__ import annotations

from typing import Any

import pytest

from tests.dhcpconf.pairs import MAIN, PRIMARY, SECONDARY, one
from worker.change.plan import plan_modify
from worker.dhcpconf import PeerSettings, modify_edit
from worker.messages import ModifyParams

TWICE = "  max-response-delay 30;\n  max-response-delay 60;\n"
PRIMARY_TWICE = PRIMARY.replace("  max-response-delay 60;\n", TWICE)  # lines 7 and 8
SECONDARY_TWICE = SECONDARY.replace("  max-response-delay 60;\n", TWICE)


def params(**settings: Any) -> ModifyParams:
    return ModifyParams.model_validate(
        {"Name": "fo", "PrimaryServer": "dhcp1", "SecondaryServer": "dhcp2", **settings}
    )


def test_a_modify_to_the_value_of_the_last_duplicate_changes_no_byte() -> None:
    """dhcpd runs 60 already (the last one wins); rewriting the first 30 would change
    nothing it runs and restart both servers for it."""
    edit = modify_edit(one(PRIMARY_TWICE), "fo", PeerSettings(max_response_delay=60))
    assert edit.texts == {MAIN: PRIMARY_TWICE} and edit.patches == {}
    [warning] = edit.warnings
    assert (warning.code, warning.file, warning.line) == ("duplicate_statement", MAIN, 8)
    assert "lines 7, 8" in warning.message and "last one" in warning.message
    once = modify_edit(one(PRIMARY), "fo", PeerSettings(max_response_delay=60))
    assert once.warnings == () and once.texts == {MAIN: PRIMARY}


@pytest.mark.parametrize("value", [45, 30])
def test_a_real_change_sets_every_duplicate_and_still_warns(value: int) -> None:
    """30 is the first one's value, not the one dhcpd runs: a change, to both."""
    edit = modify_edit(one(PRIMARY_TWICE), "fo", PeerSettings(max_response_delay=value))
    assert edit.texts[MAIN] == PRIMARY_TWICE.replace(
        "max-response-delay 30;", f"max-response-delay {value};"
    ).replace("max-response-delay 60;", f"max-response-delay {value};")
    assert [w.code for w in edit.warnings] == ["duplicate_statement"]
    assert f"each one is set to {value}" in edit.warnings[0].message


def test_the_plan_of_a_modify_to_the_last_value_changes_neither_server_and_warns_on_both() -> None:
    plans = plan_modify(params(MaxResponseDelay=60), one(PRIMARY_TWICE), one(SECONDARY_TWICE))
    assert [p.changed for p in plans] == [False, False]
    assert [p.after[MAIN] for p in plans] == [PRIMARY_TWICE, SECONDARY_TWICE]
    assert [[(w.code, w.server) for w in p.warnings] for p in plans] == [
        [("duplicate_statement", "dhcp1")],
        [("duplicate_statement", "dhcp2")],
    ]
    assert plans[0].warnings[0].message.startswith(f"{MAIN}:8: failover peer 'fo'")
