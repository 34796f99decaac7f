"""``include "file";`` statements: which files a config pulls in, and pointing them elsewhere.

The transport reads the included files next to the main one; a validation run (``dhcpd -t``
on a staged copy, or the tests' stubs) needs the copies to include each other instead of the
live files, which :func:`rewrite_includes` does without touching anything else.
"""

from __future__ import annotations

from collections.abc import Mapping

from worker.dhcpconf.configset import include_target
from worker.dhcpconf.edits import Patch, apply
from worker.dhcpconf.lexer import quote
from worker.dhcpconf.tree import Statement, parse, walk


def include_paths(text: str, filename: str = "dhcpd.conf") -> list[str]:
    """The paths of every include statement, in file order, as written (not resolved)."""
    doc = parse(text, filename)
    return [
        path
        for node, _ in walk(doc.items)
        if isinstance(node, Statement) and (path := include_target(doc, node)) is not None
    ]


def rewrite_includes(text: str, mapping: Mapping[str, str]) -> str:
    """``text`` with each include of a path in ``mapping`` pointing at ``mapping[path]``."""
    doc = parse(text)
    patches: list[Patch] = []
    for node, _ in walk(doc.items):
        if not isinstance(node, Statement):
            continue
        path = include_target(doc, node)
        if path is not None and path in mapping:
            string = doc.tokens(node)[1]
            patches.append(Patch(string.start, string.end, quote(mapping[path])))
    return apply(text, patches)
