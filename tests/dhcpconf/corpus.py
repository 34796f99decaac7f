"""The corpus configs as test cases: which file is the main one, what stubs its includes need.

Paths inside a case are the ones the files were written for (/etc/dhcp/...); the tests stage
them in a temporary directory and rewrite the includes (see conftest.Dhcpd).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tests.dhcpconf.pairs import MAIN
from worker.dhcpconf import ConfigSet, Role

#: Every config in the shared corpus (a test checks this list against the directory).
CORPUS_FILES = (
    "DHCP-FAILOVER__script-secund.conf",
    "DHCP-FAILOVER__script.conf",
    "bertvv-ansible-role-dhcp__dhcpd.conf.rendered.conf",
    "debops__ansible_failovers.conf.rendered.conf",
    "debops__dhcpd.conf.rendered.conf",
    "isc-dhcp__dhcp-1.conf",
    "isc-dhcp__dhcp-2.conf",
    "net-isc-dhcpd__40-failover-data.conf",
    "theforeman-puppet-dhcp__dhcpd.conf.rendered.conf",
    "voxpupuli-puppet-dhcp__dhcpd.conf.rendered.conf",
    "voxpupuli-puppet-dhcp__dhcpd.pools.rendered.conf",
    "vyos-1x__dhcpd.conf.rendered.conf",
)

#: The key theforeman's zone names; dhcpd wants it defined before the zone uses it.
RNDC_KEY_STUB = 'key rndc-key {\n  algorithm hmac-md5;\n  secret "c3R1Yi1zZWNyZXQ=";\n}\n'
#: DebOps' failovers file is include-only: dhcpd accepts it with a pool that refers to it.
DEBOPS_FAILOVERS_MAIN = """\
# test main file: includes the DebOps failovers file and gives its peer a pool
include "/etc/dhcp/ansible_failovers.conf";
subnet 172.16.0.0 netmask 255.255.255.0 {
  pool {
    failover peer "failover-partner";
    range 172.16.0.100 172.16.0.199;
  }
}
"""


def corpus_text(corpus_dir: Path, name: str) -> str:
    """A corpus file as the worker reads any config: UTF-8, any other byte kept."""
    return (corpus_dir / name).read_text(encoding="utf-8", errors="surrogateescape")


@dataclass(frozen=True)
class CorpusCase:
    """One corpus config that dhcpd accepts: its files (path -> corpus name or stub text)."""

    id: str
    main: str
    peer: str
    role: Role
    includes: dict[str, str] = field(default_factory=dict)
    corpus_includes: dict[str, str] = field(default_factory=dict)
    main_is_stub: bool = False

    def files(self, corpus_dir: Path) -> dict[str, str]:
        main = self.main if self.main_is_stub else corpus_text(corpus_dir, self.main)
        files = {MAIN: main, **self.includes}
        for path, name in self.corpus_includes.items():
            files[path] = corpus_text(corpus_dir, name)
        return files

    def config_set(self, corpus_dir: Path) -> ConfigSet:
        return ConfigSet.parse(self.files(corpus_dir), MAIN)


CASES = [
    CorpusCase(
        "bertvv", "bertvv-ansible-role-dhcp__dhcpd.conf.rendered.conf", "failover-group", "primary"
    ),
    CorpusCase(
        "debops-main",
        "debops__dhcpd.conf.rendered.conf",
        "failover-partner",
        "primary",
        includes={"/etc/dhcp/dhcpd-extra.conf": ""},
    ),
    CorpusCase(
        "debops-failovers",
        DEBOPS_FAILOVERS_MAIN,
        "failover-partner",
        "secondary",
        corpus_includes={
            "/etc/dhcp/ansible_failovers.conf": "debops__ansible_failovers.conf.rendered.conf"
        },
        main_is_stub=True,
    ),
    CorpusCase("isc-dhcp-1", "isc-dhcp__dhcp-1.conf", "foo", "primary"),
    CorpusCase("isc-dhcp-2", "isc-dhcp__dhcp-2.conf", "foo", "secondary"),
    CorpusCase(
        "theforeman",
        "theforeman-puppet-dhcp__dhcpd.conf.rendered.conf",
        "dhcp-failover",
        "primary",
        includes={"/etc/bind/rndc.key": RNDC_KEY_STUB, "/etc/dhcp/dhcpd.hosts": ""},
    ),
    CorpusCase(
        "voxpupuli",
        "voxpupuli-puppet-dhcp__dhcpd.conf.rendered.conf",
        "dhcp-failover",
        "secondary",
        includes={"/etc/dhcp/dhcpd.hosts": "", "/etc/dhcp/dhcpd.ignoredsubnets": ""},
        corpus_includes={
            "/etc/dhcp/dhcpd.pools": "voxpupuli-puppet-dhcp__dhcpd.pools.rendered.conf"
        },
    ),
    CorpusCase("vyos", "vyos-1x__dhcpd.conf.rendered.conf", "LAN-FO", "primary"),
]

#: Corpus files dhcpd rejects on their own, with the peer an edit would name.
REJECTED = {
    "DHCP-FAILOVER__script.conf": "dhcp-failover",
    "DHCP-FAILOVER__script-secund.conf": "dhcp-failover",
    "net-isc-dhcpd__40-failover-data.conf": "failover",
    "debops__ansible_failovers.conf.rendered.conf": "failover-partner",
    "voxpupuli-puppet-dhcp__dhcpd.pools.rendered.conf": "dhcp-failover",
}
