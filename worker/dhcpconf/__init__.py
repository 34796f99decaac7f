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

# The implementation modules fill these names in; see the module docstring.
