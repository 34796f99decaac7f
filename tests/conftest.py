"""Shared fixtures: each area's fixtures live in tests/fixtures/ and are registered here.

The dhcpd.conf test data is the project's own (tests/data/configs, see
tests/dhcpconf/corpus.py). ``DHCP_FAILOVER_EXTRA_CORPUS=DIR`` adds the ``*.conf`` files of DIR
to the generic config tests (round trip, and dhcpd's verdict under every edit for the files
that include nothing); the summary line says how many files and tests it added.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.dhcpconf.corpus import CONFIGS, EXTRA_CORPUS_VARIABLE, EXTRA_FILES, extra_corpus_dir

pytest_plugins: list[str] = [
    "tests.fixtures.sshd",
    "tests.fixtures.broker",
    "tests.fixtures.markers",
    "tests.fixtures.lab",
    "tests.fixtures.cluster",
]

REPO = Path(__file__).resolve().parent.parent

_EXTRA_TESTS = pytest.StashKey[frozenset[str]]()
_OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")


@pytest.fixture(scope="session")
def configs_dir() -> Path:
    """The project's dhcpd.conf fixtures (tests/data/configs)."""
    return CONFIGS


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"extra_corpus: a test on a file of ${EXTRA_CORPUS_VARIABLE} (opt-in)"
    )
    directory = extra_corpus_dir()
    if directory is not None and not directory.is_dir():
        raise pytest.UsageError(f"{EXTRA_CORPUS_VARIABLE}={directory} is not a directory")


def pytest_collection_finish(session: pytest.Session) -> None:
    session.config.stash[_EXTRA_TESTS] = frozenset(
        item.nodeid for item in session.items if item.get_closest_marker("extra_corpus")
    )


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    """How much the extra corpus added, and how it went (a file it cannot read would show
    here as a failed test, not as fewer tests)."""
    directory = extra_corpus_dir()
    if directory is None:
        terminalreporter.write_line("extra corpus: not set")
        return
    tests = config.stash.get(_EXTRA_TESTS, frozenset())
    outcomes: dict[str, set[str]] = {}
    for outcome in _OUTCOMES:
        for report in terminalreporter.stats.get(outcome, []):
            if report.nodeid in tests:
                outcomes.setdefault(outcome, set()).add(report.nodeid)
    counts = ", ".join(f"{len(outcomes[o])} {o}" for o in _OUTCOMES if o in outcomes)
    terminalreporter.write_line(
        f"extra corpus ({EXTRA_CORPUS_VARIABLE}={directory}): {len(EXTRA_FILES)} files, "
        f"{len(tests)} tests" + (f" ({counts})" if counts else "")
    )
