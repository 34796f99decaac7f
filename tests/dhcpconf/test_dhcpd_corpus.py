"""Every edit of every accepted fixture config passes the real ``dhcpd -t``; the files dhcpd
rejects are never "fixed" by an edit (also for the extra corpus, see tests/dhcpconf/corpus.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.dhcpconf.conftest import Dhcpd
from tests.dhcpconf.corpus import (
    DHCPV6,
    REJECTED,
    STANDALONE_FILES,
    CorpusCase,
    config_text,
    read_config,
)
from tests.dhcpconf.pairs import MAIN
from worker.dhcpconf import ConfigSet, PeerSettings, modify, parse, parse_dhcpd_output, remove
from worker.errors import ConfigError, Rejected
from worker.messages import DeconfigureAction

pytestmark = pytest.mark.integration

EDITS: dict[str, PeerSettings | DeconfigureAction] = {
    "mclt": PeerSettings(mclt=600),
    "port": PeerSettings(primary_port=1647),
    "partner port": PeerSettings(secondary_port=1847),
    "load balance max seconds": PeerSettings(load_balance_max_seconds=9),
    "max-response-delay": PeerSettings(max_response_delay=45),
    "max-unacked-updates": PeerSettings(max_unacked_updates=7),
    "all settings": PeerSettings(1200, 2647, 2847, 4, 20, 12),
    "remove, Disable": DeconfigureAction.disable,
    "remove, Delete": DeconfigureAction.delete,
    "remove, None": DeconfigureAction.none,
}


def edit(cs: ConfigSet, name: str, how: PeerSettings | DeconfigureAction) -> dict[str, str]:
    if isinstance(how, PeerSettings):
        return modify(cs, name, how)
    return remove(cs, [name], how)


def test_each_corpus_case_passes_dhcpd_as_it_is(dhcpd: Dhcpd, case: CorpusCase) -> None:
    rc, output = dhcpd.check(case.files(), MAIN)
    assert rc == 0, output


@pytest.mark.parametrize("name", DHCPV6)
def test_each_dhcpv6_fixture_passes_dhcpd_in_v6_mode_and_not_in_v4(dhcpd: Dhcpd, name: str) -> None:
    files = {MAIN: config_text(name)}
    rc, output = dhcpd.check(files, MAIN, v6=True)
    assert rc == 0, output
    assert dhcpd.check(files, MAIN)[0] != 0


@pytest.mark.parametrize("how", EDITS.values(), ids=EDITS.keys())
def test_every_edit_of_every_accepted_corpus_config_passes_dhcpd(
    dhcpd: Dhcpd, case: CorpusCase, how: PeerSettings | DeconfigureAction
) -> None:
    cs = case.config_set()
    after = edit(cs, case.peer, how)
    rc, output = dhcpd.check(after, MAIN)
    assert rc == 0, parse_dhcpd_output(output, dhcpd.staged_names(after))
    mclt_on_secondary = how is EDITS["mclt"] and case.role == "secondary"
    assert (after == cs.texts()) == mclt_on_secondary  # mclt is never added to a secondary


@pytest.mark.parametrize("name", REJECTED, ids=REJECTED.keys())
def test_corpus_files_dhcpd_rejects_still_round_trip_and_dhcpd_still_rejects_them(
    dhcpd: Dhcpd, name: str
) -> None:
    text = config_text(name)
    assert parse(text).text == text
    rc, _ = dhcpd.check({MAIN: text}, MAIN)
    assert rc != 0


@pytest.mark.parametrize("how", EDITS.values(), ids=EDITS.keys())
@pytest.mark.parametrize("name", REJECTED, ids=REJECTED.keys())
def test_an_edit_of_a_file_dhcpd_rejects_fails_clearly_instead_of_fixing_it(
    dhcpd: Dhcpd, name: str, how: PeerSettings | DeconfigureAction
) -> None:
    text = config_text(name)
    try:
        after = edit(ConfigSet.parse({MAIN: text}, MAIN), REJECTED[name], how)
    except Rejected as err:
        assert err.message and err.code != "error"
        return
    rc, _ = dhcpd.check(after, MAIN)  # the engine let it through: dhcpd must refuse it
    assert rc != 0, f"the edit turned a rejected file into an accepted one:\n{after[MAIN]}"


@pytest.mark.parametrize("path", STANDALONE_FILES)
def test_a_file_that_stands_alone_keeps_dhcpds_verdict_under_every_edit(
    dhcpd: Dhcpd, path: Path
) -> None:
    """The generic form of the tests above, for any file that includes nothing: dhcpd
    accepts it -> every edit of every peer passes dhcpd; dhcpd rejects it -> every edit is
    refused clearly or gives a file dhcpd still rejects."""
    text = read_config(path)
    accepted = dhcpd.check({MAIN: text}, MAIN)[0] == 0
    try:
        cs = ConfigSet.parse({MAIN: text}, MAIN)
    except ConfigError as err:
        assert not accepted, f"dhcpd accepts a file the engine refuses: {err.message}"
        assert err.line is not None and err.message
        return
    for name, peer in cs.peers().items():
        for label, how in EDITS.items():
            try:
                after = edit(cs, name, how)
            except Rejected as err:
                assert not accepted, f"{name!r}, {label}: refused on a file dhcpd accepts: {err}"
                assert err.message and err.code != "error"
                continue
            rc, output = dhcpd.check(after, MAIN)
            if accepted:
                assert rc == 0, (name, label, parse_dhcpd_output(output, dhcpd.staged_names(after)))
                if how is EDITS["mclt"] and peer.role == "secondary":
                    assert after == cs.texts()  # mclt is never added to a secondary
            else:
                assert rc != 0, f"{name!r}, {label}: the edit made dhcpd accept the file"
