"""The config engine: pure functions on dhcpd.conf text (no I/O, no asyncio).

Public API (the coordinator and the offline commands use only these names):

* ``ConfigSet.parse(files, main)`` -- a main dhcpd.conf and the files it includes, parsed
  losslessly; ``texts()`` renders them back byte for byte.
* ``include_paths(text, filename)`` -- the paths of ``include "...";`` statements, as written.
* ``check_pair(primary, secondary, name)`` -- the relationship exists on both with
  complementary roles and mirrored addresses/ports; raises ``PeerNotFound``, ``RoleMismatch``
  or ``PairMismatch``.
* ``modify(cs, name, settings)`` / ``remove(cs, names, action)`` -- new texts for every file
  of the set (unchanged files identical).
"""

from __future__ import annotations

from worker.dhcpconf.checks import check_pair
from worker.dhcpconf.configset import ConfigSet
from worker.dhcpconf.dhcpd_output import DhcpdDiagnosis, parse_dhcpd_output
from worker.dhcpconf.edits import PeerSettings, modify, remove
from worker.dhcpconf.failover import Peer, Role, ScopeRef
from worker.dhcpconf.includes import include_paths, rewrite_includes
from worker.dhcpconf.tree import Document, parse, render

__all__ = [
    "ConfigSet",
    "DhcpdDiagnosis",
    "Document",
    "Peer",
    "PeerSettings",
    "Role",
    "ScopeRef",
    "check_pair",
    "include_paths",
    "modify",
    "parse",
    "parse_dhcpd_output",
    "remove",
    "render",
    "rewrite_includes",
]
