"""The config engine: pure functions on dhcpd.conf text (no I/O, no asyncio).

Public API (the coordinator and the offline commands use only these names):

* ``ConfigSet.parse(files, main)`` -- a main dhcpd.conf and the files it includes, parsed
  losslessly; ``texts()`` renders them back byte for byte.
* ``include_paths(text, filename)`` -- the paths of ``include "...";`` statements, as written.
* ``check_pair(primary, secondary, name)`` -- the relationship exists on both with
  complementary roles and mirrored addresses/ports; raises ``PeerNotFound``, ``RoleMismatch``
  or ``PairMismatch``; returns the pair's ``ConfigWarning`` list (``mclt_on_secondary``).
* ``modify(cs, name, settings)`` / ``remove(cs, names, action)`` -- new texts for every file
  of the set (unchanged files identical); ``modify_edit`` / ``remove_edit`` give an ``Edit``:
  the texts, the patches that made them, and warnings (``duplicate_statement``).
* ``unified_diff(path, before, after, patches)`` -- the diff, from the patches (linear).
"""

from __future__ import annotations

from worker.dhcpconf.checks import ConfigWarning, check_pair
from worker.dhcpconf.configset import ConfigSet
from worker.dhcpconf.dhcpd_output import DhcpdDiagnosis, parse_dhcpd_output
from worker.dhcpconf.diff import UnifiedDiff, unified_diff
from worker.dhcpconf.edits import Edit, PeerSettings, modify, modify_edit, remove, remove_edit
from worker.dhcpconf.failover import Peer, Role, ScopeRef
from worker.dhcpconf.includes import include_paths, rewrite_includes
from worker.dhcpconf.tree import Document, parse, render

__all__ = [
    "ConfigSet",
    "ConfigWarning",
    "DhcpdDiagnosis",
    "Document",
    "Edit",
    "Peer",
    "PeerSettings",
    "Role",
    "ScopeRef",
    "UnifiedDiff",
    "check_pair",
    "include_paths",
    "modify",
    "modify_edit",
    "parse",
    "parse_dhcpd_output",
    "remove",
    "remove_edit",
    "render",
    "rewrite_includes",
    "unified_diff",
]
