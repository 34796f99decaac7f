"""The project's own dhcpd.conf fixtures (tests/data/configs) as test cases.

Each fixture says in its header comment what it exercises. Every file there is one of:

* the main file of a :data:`CASES` entry -- a config dhcpd accepts, with the fixtures its
  includes name (paths inside a case are the ones the files are written for, /etc/dhcp/...;
  the tests stage them in a temporary directory and rewrite the includes, see conftest.Dhcpd);
* an included part of a case (some of them dhcpd rejects on their own);
* in :data:`REJECTED` -- dhcpd rejects it on its own (so do the parts above that need their
  main file); the engine must still render it back byte for byte and refuse any edit clearly;
* in :data:`DHCPV6` -- a ``dhcpd -6`` config (failover is DHCPv4 only): round trip only.

An extra directory of ``*.conf`` files (a corpus of real-world configs kept outside the
repository) can be added to the generic tests with the environment variable
``DHCP_FAILOVER_EXTRA_CORPUS``; see :func:`extra_corpus_dir`. Without it nothing changes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.dhcpconf.pairs import MAIN
from worker.dhcpconf import ConfigSet, Role, include_paths
from worker.errors import ConfigError

#: The fixtures' directory, inside the repository.
CONFIGS = Path(__file__).resolve().parent.parent / "data" / "configs"
#: Every fixture, by file name.
CONFIG_FILES = tuple(sorted(p.name for p in CONFIGS.glob("*.conf")))

#: Names a directory of further ``*.conf`` files to run the generic tests on.
EXTRA_CORPUS_VARIABLE = "DHCP_FAILOVER_EXTRA_CORPUS"


def read_config(path: Path) -> str:
    """A config file as the worker reads any config: UTF-8, any other byte kept."""
    return path.read_text(encoding="utf-8", errors="surrogateescape")


def config_text(name: str) -> str:
    """The text of the fixture ``name``."""
    return read_config(CONFIGS / name)


@dataclass(frozen=True)
class CorpusCase:
    """A fixture config that dhcpd accepts: its main file, the peer in it and the fixtures
    its includes name (path as the main file writes it -> fixture name)."""

    main: str
    peer: str
    role: Role
    includes: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.main.removesuffix(".conf")

    def files(self) -> dict[str, str]:
        return {MAIN: config_text(self.main)} | {
            path: config_text(name) for path, name in self.includes.items()
        }

    def config_set(self) -> ConfigSet:
        return ConfigSet.parse(self.files(), MAIN)


BRANCH_POOLS = "/etc/dhcp/dhcpd.pools"
BRANCH_HOSTS = "/etc/dhcp/dhcpd.hosts"
OFFICE_PEER = "/etc/dhcp/failover.conf"
OFFICE_LOCAL = "/etc/dhcp/dhcpd-local.conf"

CASES = [
    CorpusCase(
        "branch-primary.conf",
        "branch-fo",
        "primary",
        includes={
            "/etc/bind/rndc.key": "branch-rndc-key.conf",
            BRANCH_HOSTS: "branch-hosts.conf",
            BRANCH_POOLS: "branch-pools.conf",
        },
    ),
    CorpusCase(
        "branch-secondary.conf",
        "branch-fo",
        "secondary",
        includes={
            BRANCH_POOLS: "branch-pools.conf",
            BRANCH_HOSTS: "branch-hosts.conf",
            "/etc/dhcp/dhcpd.static": "branch-static-subnets.conf",  # included relatively
        },
    ),
    CorpusCase("campus-primary.conf", "campus", "primary"),
    CorpusCase("campus-secondary.conf", "campus", "secondary"),
    CorpusCase("classes-primary.conf", "policy-fo", "primary"),
    CorpusCase("lexing-primary.conf", "lexing-fo", "primary"),
    CorpusCase("lexing-secondary-crlf.conf", "lexing-fo", "secondary"),
    CorpusCase(
        "office-primary.conf",
        "office-failover",
        "primary",
        includes={OFFICE_LOCAL: "office-local.conf"},
    ),
    CorpusCase(
        "office-secondary.conf",
        "office-failover",
        "secondary",
        includes={OFFICE_PEER: "office-peer.conf", OFFICE_LOCAL: "office-local.conf"},
    ),
    CorpusCase("pxe-primary.conf", "pxe-fo", "primary"),
    CorpusCase("router-primary.conf", "LAN-FO", "primary"),
    CorpusCase("scopes-primary.conf", "dc-fo", "primary"),
    CorpusCase("scopes-secondary.conf", "dc-fo", "secondary"),
]


def case(case_id: str) -> CorpusCase:
    """The case whose main fixture is ``case_id``.conf."""
    return next(c for c in CASES if c.id == case_id)


#: Primary and secondary cases that mirror each other and pass the pair check as they are.
PAIRS = [
    (case("branch-primary"), case("branch-secondary")),
    (case("lexing-primary"), case("lexing-secondary-crlf")),
    (case("office-primary"), case("office-secondary")),
    (case("scopes-primary"), case("scopes-secondary")),
]
#: A mirrored pair whose secondary still carries mclt (dhcpd accepts both files).
MCLT_ON_SECONDARY_PAIR = (case("campus-primary"), case("campus-secondary"))

#: Fixtures dhcpd rejects on their own, with the peer an edit would name.
REJECTED = {
    "rejected-missing-mclt.conf": "no-mclt",
    "rejected-peer-without-pools.conf": "lonely-fo",
    "rejected-unicode-hyphens.conf": "hq-fo",
    # parts of a case that need their main file: pools without their peer, a peer without pools
    "branch-pools.conf": "branch-fo",
    "office-peer.conf": "office-failover",
}

#: DHCPv6 fixtures (``dhcpd -6 -t``); no failover there.
DHCPV6 = ("dhcpv6-subnet6.conf",)


# -- the extra corpus -------------------------------------------------------------------------


def extra_corpus_dir() -> Path | None:
    """The directory ``DHCP_FAILOVER_EXTRA_CORPUS`` names, or None when it is unset or empty.

    A value that is not a directory is a usage error (tests/conftest.py reports it before
    collection), never a silent "no extra files".
    """
    value = os.environ.get(EXTRA_CORPUS_VARIABLE, "")
    return Path(value) if value else None


def _extra_files() -> list[Path]:
    directory = extra_corpus_dir()
    if directory is None or not directory.is_dir():
        return []
    return sorted(directory.glob("*.conf"))


def _stands_alone(path: Path) -> bool:
    """Whether dhcpd can check the file without any other: it includes nothing.

    A file the engine cannot parse counts as standing alone: dhcpd must reject it too.
    """
    try:
        return not include_paths(read_config(path), path.name)
    except ConfigError:
        return True


EXTRA_FILES = _extra_files()

_EXTRA = pytest.mark.extra_corpus


def _param(path: Path, extra: bool) -> object:
    if extra:
        return pytest.param(path, id=f"extra:{path.name}", marks=_EXTRA)
    return pytest.param(path, id=path.name)


#: Every fixture, then every extra file: the round-trip tests run on these.
ALL_FILES = [_param(CONFIGS / n, False) for n in CONFIG_FILES] + [
    _param(p, True) for p in EXTRA_FILES
]
#: The files of ALL_FILES that include nothing, so dhcpd can judge each one alone.
STANDALONE_FILES = [
    _param(CONFIGS / n, False) for n in CONFIG_FILES if _stands_alone(CONFIGS / n)
] + [_param(p, True) for p in EXTRA_FILES if _stands_alone(p)]
