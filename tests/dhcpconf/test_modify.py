"""Modify: the relationship's settings land in the right statements, and nothing else moves."""

from __future__ import annotations

import difflib
from dataclasses import fields

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.dhcpconf.corpus import CASES, CorpusCase
from tests.dhcpconf.pairs import MAIN, PRIMARY, SECONDARY, one
from worker.dhcpconf import ConfigSet, PeerSettings, modify
from worker.errors import ConfigError, PeerNotFound, Rejected


def changed_lines(before: str, after: str) -> list[str]:
    return [
        line for line in difflib.ndiff(before.splitlines(), after.splitlines()) if line[:1] in "+-"
    ]


SETTING_TARGETS = [
    # setting, value, primary statement, secondary statement (None: untouched)
    ("mclt", 900, "mclt 900;", None),
    ("primary_port", 700, "port 700;", "peer port 700;"),
    ("secondary_port", 701, "peer port 701;", "port 701;"),
    ("load_balance_max_seconds", 7, "load balance max seconds 7;", "load balance max seconds 7;"),
    ("max_response_delay", 30, "max-response-delay 30;", "max-response-delay 30;"),
    ("max_unacked_updates", 5, "max-unacked-updates 5;", "max-unacked-updates 5;"),
]


@pytest.mark.parametrize(
    ("setting", "value", "on_primary", "on_secondary"),
    SETTING_TARGETS,
    ids=[t[0] for t in SETTING_TARGETS],
)
def test_each_setting_changes_exactly_its_statement_on_each_role(
    setting: str, value: int, on_primary: str, on_secondary: str | None
) -> None:
    change = PeerSettings(**{setting: value})
    after = modify(one(PRIMARY), "fo", change)[MAIN]
    diff = changed_lines(PRIMARY, after)
    assert len(diff) == 2 and diff[1].strip("+ ") == on_primary, diff
    after = modify(one(SECONDARY), "fo", change)[MAIN]
    diff = changed_lines(SECONDARY, after)
    if on_secondary is None:
        assert after == SECONDARY
    else:
        assert len(diff) == 2 and diff[1].strip("+ ") == on_secondary, diff


def test_mclt_is_never_added_to_a_secondary() -> None:
    assert modify(one(SECONDARY), "fo", PeerSettings(mclt=60))[MAIN] == SECONDARY


def test_a_missing_statement_is_added_after_the_last_one_at_the_block_indentation() -> None:
    text = PRIMARY.replace("  load balance max seconds 3;\n", "")
    after = modify(one(text), "fo", PeerSettings(load_balance_max_seconds=5))[MAIN]
    assert after == text.replace("  split 128;\n", "  split 128;\n  load balance max seconds 5;\n")


def test_added_statements_follow_tabs_crlf_and_a_trailing_comment() -> None:
    text = (
        'failover peer "fo" {\r\n\tprimary;\r\n\taddress 10.0.0.1;\r\n'
        "\tpeer address 10.0.0.2;\r\n\tmclt 60;\r\n\tsplit 128; # the last one\r\n"
        "\t# a comment line\r\n}\r\n"
        'subnet 10.0.0.0 netmask 255.0.0.0 {\r\n\tpool {\r\n\t\tfailover peer "fo";\r\n'
        "\t\trange 10.0.0.5 10.0.0.9;\r\n\t}\r\n}\r\n"
    )
    after = modify(one(text), "fo", PeerSettings(load_balance_max_seconds=5, primary_port=6))[MAIN]
    assert after == text.replace(
        "# the last one\r\n", "# the last one\r\n\tport 6;\r\n\tload balance max seconds 5;\r\n"
    )


def test_statements_are_added_on_the_same_line_in_a_one_line_block() -> None:
    text = PRIMARY.replace("  load balance max seconds 3;\n}", "  split 1; }")
    after = modify(one(text), "fo", PeerSettings(load_balance_max_seconds=5))[MAIN]
    assert "  split 1; load balance max seconds 5; }" in after


def test_only_the_value_changes_spacing_and_comments_stay() -> None:
    text = PRIMARY.replace("  port 647;", "  port   647 ;   # ours")
    after = modify(one(text), "fo", PeerSettings(primary_port=700))[MAIN]
    assert after == text.replace("port   647 ;", "port   700 ;")


def test_every_duplicate_of_a_statement_gets_the_new_value() -> None:
    text = PRIMARY.replace("  mclt 1800;\n", "  mclt 1800;\n  mclt 1200;\n")
    after = modify(one(text), "fo", PeerSettings(mclt=600))[MAIN]
    assert after.count("mclt 600;") == 2 and "1200" not in after


def test_a_value_written_differently_but_equal_is_left_alone() -> None:
    text = PRIMARY.replace("mclt 1800", "mclt 01800")
    assert modify(one(text), "fo", PeerSettings(mclt=1800))[MAIN] == text


def test_a_non_numeric_value_is_refused_not_replaced() -> None:
    text = PRIMARY.replace("mclt 1800", "mclt lots")
    with pytest.raises(ConfigError) as err:
        modify(one(text), "fo", PeerSettings(mclt=60))
    assert err.value.code == "value_not_numeric" and err.value.line == 9


@pytest.mark.parametrize(
    "change",
    [
        PeerSettings(primary_port=0),
        PeerSettings(secondary_port=70000),
        PeerSettings(mclt=-1),
        PeerSettings(max_response_delay=2**32),
    ],
)
def test_out_of_range_settings_are_rejected(change: PeerSettings) -> None:
    with pytest.raises(Rejected) as err:
        modify(one(PRIMARY), "fo", change)
    assert err.value.code == "value_out_of_range"


def test_an_unknown_peer_is_peer_not_found() -> None:
    with pytest.raises(PeerNotFound):
        modify(one(PRIMARY), "other", PeerSettings(mclt=1))


def test_only_the_file_holding_the_peer_changes() -> None:
    case = next(c for c in CASES if c.id == "office-secondary")
    cs = case.config_set()
    after = modify(cs, case.peer, PeerSettings(max_response_delay=11))
    assert after[MAIN] == cs.texts()[MAIN]
    failovers = "/etc/dhcp/failover.conf"
    assert changed_lines(cs.texts()[failovers], after[failovers]) == [
        "-     max-response-delay 30;",
        "+     max-response-delay 11;",
    ]


# -- properties over the corpus ------------------------------------------------------------


def current_settings(cs: ConfigSet, case: CorpusCase) -> PeerSettings:
    params = cs.peer(case.peer).params

    def value(key: str) -> int | None:
        return int(params[key]) if key in params else None

    own, partner = value("port"), value("peer port")
    return PeerSettings(
        mclt=value("mclt"),
        primary_port=own if case.role == "primary" else partner,
        secondary_port=partner if case.role == "primary" else own,
        load_balance_max_seconds=value("load balance max seconds"),
        max_response_delay=value("max-response-delay"),
        max_unacked_updates=value("max-unacked-updates"),
    )


def test_modifying_to_the_current_values_changes_no_byte(case: CorpusCase) -> None:
    cs = case.config_set()
    change = current_settings(cs, case)
    assert any(getattr(change, f.name) is not None for f in fields(change))
    assert modify(cs, case.peer, change) == cs.texts()


@pytest.mark.parametrize("setting", [t[0] for t in SETTING_TARGETS])
def test_a_one_parameter_modify_changes_exactly_one_line_or_adds_one(
    case: CorpusCase, setting: str
) -> None:
    cs = case.config_set()
    after = modify(cs, case.peer, PeerSettings(**{setting: 4321}))
    diffs = [changed_lines(cs.texts()[p], after[p]) for p in after]
    changes = [line for diff in diffs for line in diff]
    if setting == "mclt" and case.role == "secondary":
        assert changes == []
        return
    assert [c[0] for c in changes] in (["-", "+"], ["+"]), changes
    if len(changes) == 1:  # an added statement
        assert changes[0].rstrip().endswith(" 4321;")
        return
    # only the value changes, wherever the statement puts it (its own line, before " ;", ...)
    old, new = (c[2:].split() for c in changes)
    assert len(old) == len(new), changes
    assert [n for o, n in zip(old, new, strict=True) if o != n] in (["4321"], ["4321;"]), changes


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    change=st.builds(
        PeerSettings,
        mclt=st.none() | st.integers(0, 86400),
        primary_port=st.none() | st.integers(1, 65535),
        secondary_port=st.none() | st.integers(1, 65535),
        load_balance_max_seconds=st.none() | st.integers(0, 3600),
        max_response_delay=st.none() | st.integers(1, 3600),
        max_unacked_updates=st.none() | st.integers(1, 65535),
    ),
)
def test_any_modify_sets_exactly_the_requested_values(
    data: st.DataObject, change: PeerSettings
) -> None:
    case = data.draw(st.sampled_from(CASES))
    cs = case.config_set()
    after = ConfigSet.parse(modify(cs, case.peer, change), MAIN)
    before, now = cs.peer(case.peer).params, after.peer(case.peer).params
    expected = dict(before)
    for key, value in change.statements(case.role):
        if key != "mclt" or case.role == "primary":
            expected[key] = (
                str(value) if key not in before or int(before[key]) != value else before[key]
            )
    assert now == expected
    assert [r.label for r in after.peer(case.peer).pools] == [
        r.label for r in cs.peer(case.peer).pools
    ]
