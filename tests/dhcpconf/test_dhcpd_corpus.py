"""Every edit of every accepted corpus config passes the real ``dhcpd -t``; the corpus files
dhcpd rejects are never "fixed" by an edit."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.dhcpconf.conftest import Dhcpd
from tests.dhcpconf.corpus import REJECTED, CorpusCase, corpus_text
from tests.dhcpconf.pairs import MAIN
from worker.dhcpconf import ConfigSet, PeerSettings, modify, parse, parse_dhcpd_output, remove
from worker.errors import Rejected
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


def test_each_corpus_case_passes_dhcpd_as_it_is(
    dhcpd: Dhcpd, corpus_dir: Path, case: CorpusCase
) -> None:
    rc, output = dhcpd.check(case.files(corpus_dir), MAIN)
    assert rc == 0, output


@pytest.mark.parametrize("how", EDITS.values(), ids=EDITS.keys())
def test_every_edit_of_every_accepted_corpus_config_passes_dhcpd(
    dhcpd: Dhcpd, corpus_dir: Path, case: CorpusCase, how: PeerSettings | DeconfigureAction
) -> None:
    cs = case.config_set(corpus_dir)
    after = edit(cs, case.peer, how)
    rc, output = dhcpd.check(after, MAIN)
    assert rc == 0, parse_dhcpd_output(output, dhcpd.staged_names(after))
    mclt_on_secondary = how is EDITS["mclt"] and case.role == "secondary"
    assert (after == cs.texts()) == mclt_on_secondary  # mclt is never added to a secondary


@pytest.mark.parametrize("name", REJECTED, ids=REJECTED.keys())
def test_corpus_files_dhcpd_rejects_still_round_trip_and_dhcpd_still_rejects_them(
    dhcpd: Dhcpd, corpus_dir: Path, name: str
) -> None:
    text = corpus_text(corpus_dir, name)
    assert parse(text).text == text
    rc, _ = dhcpd.check({MAIN: text}, MAIN)
    assert rc != 0


@pytest.mark.parametrize("how", EDITS.values(), ids=EDITS.keys())
@pytest.mark.parametrize("name", REJECTED, ids=REJECTED.keys())
def test_an_edit_of_a_file_dhcpd_rejects_fails_clearly_instead_of_fixing_it(
    dhcpd: Dhcpd, corpus_dir: Path, name: str, how: PeerSettings | DeconfigureAction
) -> None:
    text = corpus_text(corpus_dir, name)
    try:
        after = edit(ConfigSet.parse({MAIN: text}, MAIN), REJECTED[name], how)
    except Rejected as err:
        assert err.message and err.code != "error"
        return
    rc, _ = dhcpd.check(after, MAIN)  # the engine let it through: dhcpd must refuse it
    assert rc != 0, f"the edit turned a rejected file into an accepted one:\n{after[MAIN]}"
