"""The plan step: candidates and diffs for both servers, pair checked before and after."""

from __future__ import annotations

from typing import Any

import pytest

from tests.dhcpconf.pairs import MAIN, PRIMARY, SECONDARY, one
from worker.change.plan import (
    ServerPlan,
    plan_modify,
    plan_remove,
    remove_partners,
    settings_from_params,
)
from worker.dhcpconf import ConfigSet, PeerSettings
from worker.errors import ConfigError, PairMismatch, RoleMismatch
from worker.messages import DeconfigureAction, ModifyParams, RemoveParams


def modify_params(**settings: Any) -> ModifyParams:
    return ModifyParams.model_validate(
        {"Name": "fo", "PrimaryServer": "dhcp1", "SecondaryServer": "dhcp2", **settings}
    )


def test_partner_port_defaults_to_port() -> None:
    assert settings_from_params(modify_params(Port=700)) == PeerSettings(
        primary_port=700, secondary_port=700
    )
    assert settings_from_params(modify_params(Port=700, PartnerPort=701)) == PeerSettings(
        primary_port=700, secondary_port=701
    )
    assert settings_from_params(modify_params(PartnerPort=701)) == PeerSettings(secondary_port=701)


def test_every_micetro_setting_maps_to_its_relationship_setting() -> None:
    params = modify_params(Mclt=1, LoadBalanceMaxSeconds=2, MaxResponseDelay=3, MaxUnackedUpdates=4)
    assert settings_from_params(params) == PeerSettings(
        mclt=1, load_balance_max_seconds=2, max_response_delay=3, max_unacked_updates=4
    )


def test_plan_modify_gives_both_candidates_with_unified_diffs() -> None:
    primary, secondary = plan_modify(
        modify_params(Mclt=900, Port=700), one(PRIMARY), one(SECONDARY)
    )
    assert (primary.server, primary.role, primary.main) == ("dhcp1", "primary", MAIN)
    assert (secondary.server, secondary.role) == ("dhcp2", "secondary")
    assert primary.before == {MAIN: PRIMARY} and primary.changed and secondary.changed
    assert primary.diff() == (
        "--- a/etc/dhcp/dhcpd.conf\n+++ b/etc/dhcp/dhcpd.conf\n"
        "@@ -1,12 +1,12 @@\n"
        ' failover peer "fo" {\n   primary;\n   address 10.0.0.1;\n'
        "-  port 647;\n+  port 700;\n   peer address 10.0.0.2;\n"
        "-  peer port 847;\n+  peer port 700;\n"
        "   max-response-delay 60;\n   max-unacked-updates 10;\n"
        "-  mclt 1800;\n+  mclt 900;\n   split 128;\n   load balance max seconds 3;\n }\n"
    )
    assert "+  port 700;" in secondary.diff() and "mclt" not in secondary.diff()


def test_a_modify_already_in_place_changes_nothing() -> None:
    plans = plan_modify(
        modify_params(Mclt=1800, Port=647, PartnerPort=847), one(PRIMARY), one(SECONDARY)
    )
    assert [p.changed for p in plans] == [False, False]
    assert [p.diff() for p in plans] == ["", ""]


def test_a_wrong_pair_is_rejected_before_anything_is_computed() -> None:
    with pytest.raises(RoleMismatch):
        plan_modify(modify_params(Mclt=1), one(SECONDARY), one(PRIMARY))


def test_candidates_that_would_disagree_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    import worker.change.plan as plan
    from worker.dhcpconf import Edit
    from worker.dhcpconf import modify as real

    def skewed(cs: ConfigSet, name: str, settings: PeerSettings) -> Edit:
        texts = real(cs, name, settings)
        return Edit({p: t.replace("  port 847;", "  port 848;") for p, t in texts.items()})

    monkeypatch.setattr(plan, "modify_edit", skewed)
    with pytest.raises(PairMismatch) as err:
        plan_modify(modify_params(Mclt=60), one(PRIMARY), one(SECONDARY))
    assert err.value.code == "port_mismatch"


def test_a_diff_says_when_the_last_line_has_no_newline() -> None:
    plan = ServerPlan("s", "primary", "/a.conf", {"/a.conf": "a;\nb;"}, {"/a.conf": "a;\nc;"})
    assert plan.diff().endswith(
        "-b;\n\\ No newline at end of file\n+c;\n\\ No newline at end of file\n"
    )


def test_a_diff_covers_every_changed_file_and_only_those() -> None:
    plan = ServerPlan(
        "s",
        "secondary",
        "/m.conf",
        {"/m.conf": "x;\n", "/inc.conf": "a;\n", "/same.conf": "s;\n"},
        {"/m.conf": "y;\n", "/inc.conf": "b;\n", "/same.conf": "s;\n"},
    )
    assert plan.changed_files() == ["/m.conf", "/inc.conf"]
    assert "--- a/inc.conf\n+++ b/inc.conf\n" in plan.diff() and "same" not in plan.diff()


def test_remove_partners_gives_the_role_here_and_the_partners_address() -> None:
    assert remove_partners(one(PRIMARY), ["fo"]) == {"fo": ("primary", "10.0.0.2")}
    assert remove_partners(one(SECONDARY), ["fo"]) == {"fo": ("secondary", "10.0.0.1")}


def test_remove_partners_needs_a_peer_address() -> None:
    with pytest.raises(PairMismatch) as err:
        remove_partners(one(PRIMARY.replace("  peer address 10.0.0.2;\n", "")), ["fo"])
    assert err.value.code == "peer_address_missing"


def rename(text: str, name: str, net: str) -> str:
    return (
        text.replace('"fo"', f'"{name}"')
        .replace("10.0.0.0 netmask", f"{net} netmask")
        .replace("10.0.0.10 10.0.0.99", f"{net[:-1]}10 {net[:-1]}99")
    )


def test_plan_remove_covers_every_server_of_every_name_as_one_change() -> None:
    configs = {
        "dhcp1": ConfigSet.parse({MAIN: PRIMARY + rename(PRIMARY, "fo2", "10.8.0.0")}, MAIN),
        "dhcp2": one(SECONDARY),
        "dhcp3": one(rename(SECONDARY, "fo2", "10.8.0.0")),
    }
    pairs = {"fo": ("dhcp1", "dhcp2"), "fo2": ("dhcp1", "dhcp3")}
    params = RemoveParams.model_validate(
        {"Server": "dhcp2", "Name": ["fo", "fo2"], "DeconfigureAction": "Delete"}
    )
    plans = plan_remove(params, configs, pairs)
    assert [(p.server, p.role) for p in plans] == [
        ("dhcp2", "secondary"),
        ("dhcp1", "primary"),
        ("dhcp3", "secondary"),
    ]
    assert all(p.changed for p in plans)
    assert "failover" not in plans[1].after[MAIN]
    assert plans[1].after[MAIN].count("subnet") == 2  # the primary keeps its scopes
    assert "subnet" not in plans[0].after[MAIN]  # Delete on the secondary


def test_plan_remove_checks_each_pair_first() -> None:
    configs = {"dhcp1": one(PRIMARY), "dhcp2": one(PRIMARY)}
    params = RemoveParams.model_validate({"Server": "dhcp1", "Name": "fo"})
    with pytest.raises(RoleMismatch):
        plan_remove(params, configs, {"fo": ("dhcp1", "dhcp2")})


def test_plan_remove_needs_a_pair_for_every_name() -> None:
    params = RemoveParams.model_validate({"Server": "dhcp1", "Name": "fo"})
    with pytest.raises(ConfigError):
        plan_remove(params, {"dhcp1": one(PRIMARY)}, {})


def test_plan_remove_uses_the_requested_action_on_the_secondary() -> None:
    params = RemoveParams.model_validate(
        {"Server": "dhcp1", "Name": "fo", "DeconfigureAction": DeconfigureAction.disable.value}
    )
    plans = plan_remove(
        params, {"dhcp1": one(PRIMARY), "dhcp2": one(SECONDARY)}, {"fo": ("dhcp1", "dhcp2")}
    )
    assert "deny all clients;" in plans[1].after[MAIN]
    assert "deny all clients;" not in plans[0].after[MAIN]
