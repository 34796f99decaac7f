"""A main dhcpd.conf and the files it includes, parsed, with their failover model.

A peer may be declared in one file and referenced from pools in another (a Puppet role writes
the peer into dhcpd.conf and the pools into an included file, a DebOps role does the reverse),
so the model is built over the whole set. An included file's top level sits inside whatever
block holds its ``include`` statement, exactly as dhcpd reads it.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from functools import cached_property

from worker.dhcpconf.failover import (
    Peer,
    PeerDecl,
    Reference,
    Scope,
    failover_name,
    failover_reference,
    read_peer,
)
from worker.dhcpconf.lexer import string_value
from worker.dhcpconf.tree import Block, Document, Node, Statement, gc_paused, parse, render
from worker.errors import ConfigError, PeerNotFound


class ConfigSet:
    """Parsed files by path; ``main`` is the key of the main file."""

    def __init__(self, docs: Mapping[str, Document], main: str, base: str | None = None) -> None:
        if main not in docs:
            raise ConfigError(f"main file {main!r} is not among the files given", file=main)
        self.main = main
        #: Where a relative include resolves: dhcpd's working directory (default: main's).
        self.base = base if base is not None else posixpath.dirname(main)
        self.docs: dict[str, Document] = dict(docs)
        self.declarations: dict[str, PeerDecl] = {}
        self.references: list[Reference] = []
        self._scanned: set[str] = set()
        with gc_paused():
            self._scan()

    @classmethod
    def parse(cls, files: Mapping[str, str], main: str, base: str | None = None) -> ConfigSet:
        """Parse every file; ConfigError (file, line, column) for text we cannot handle.
        ``base``: the directory a relative include is resolved against (default: main's)."""
        return cls({path: parse(text, path) for path, text in files.items()}, main, base)

    def texts(self) -> dict[str, str]:
        """Every file rendered back (identical to what was parsed)."""
        return {path: render(doc) for path, doc in self.docs.items()}

    def peers(self) -> dict[str, Peer]:
        return dict(self._peers)

    def peer(self, name: str) -> Peer:
        try:
            return self._peers[name]
        except KeyError:
            raise self.not_found(name) from None

    def declaration(self, name: str) -> PeerDecl:
        try:
            return self.declarations[name]
        except KeyError:
            raise self.not_found(name) from None

    def not_found(self, name: str) -> PeerNotFound:
        known = ", ".join(repr(n) for n in sorted(self.declarations)) or "none"
        return PeerNotFound(
            f"failover peer {name!r} is not declared in {self.main} (declared: {known})",
            detail={"name": name, "file": self.main},
        )

    def references_to(self, name: str) -> list[Reference]:
        """Every ``failover peer "NAME";`` statement naming ``name``, in file order."""
        return self._by_name.get(name, [])

    @cached_property
    def _by_name(self) -> dict[str, list[Reference]]:
        index: dict[str, list[Reference]] = {}
        for ref in self.references:
            index.setdefault(ref.name, []).append(ref)
        return index

    @cached_property
    def _peers(self) -> dict[str, Peer]:
        return {
            name: Peer(
                name=name,
                role=decl.role,
                role_declared=decl.role_declared,
                params=decl.values(),
                file=decl.file,
                line=decl.line,
                pools=tuple(r.scope_ref() for r in self.references_to(name)),
            )
            for name, decl in self.declarations.items()
        }

    # -- building the model -------------------------------------------------------------------

    def _scan(self) -> None:
        """Walk the main file, following includes into the set, then any file not reached."""
        self._scan_file(self.main, ())
        for path in self.docs:
            self._scan_file(path, ())

    def _scan_file(self, path: str, scope: Scope) -> None:
        if path in self._scanned:  # included twice, or an include cycle
            return
        self._scanned.add(path)
        doc = self.docs[path]
        self._scan_items(doc, doc.items, scope)

    def _scan_items(self, doc: Document, items: list[Node], scope: Scope) -> None:
        text = doc.text
        for node in items:
            first = text[node.start]
            if isinstance(node, Block):
                if first in "fF" and (name := failover_name(doc, node)) is not None:
                    self._declare(doc, node, name)
                    continue
                self._scan_items(doc, node.body, (*scope, (doc, node)))
            elif first in "fF":
                if (found := failover_reference(doc, node)) is not None:
                    kind = _holder_kind(scope)
                    self.references.append(Reference(found[0], doc, node, scope, kind, found[1]))
            elif first in "iI" and doc.keyword(node) == "include":
                target = self.resolve(doc, node)
                if target is not None:
                    self._scan_file(target, scope)

    def _declare(self, doc: Document, block: Block, name: str) -> None:
        if name in self.declarations:
            first = self.declarations[name]
            raise doc.error(
                f"redeclaration of failover peer {name!r} (first declared at "
                f"{first.file}:{first.line})",
                block.start,
            )
        self.declarations[name] = read_peer(doc, block, name)

    def resolve(self, doc: Document, node: Statement) -> str | None:
        """The key in this set of the file an include statement names, if it is here."""
        path = include_target(doc, node)
        if path is None:
            return None
        candidates = (path, posixpath.normpath(posixpath.join(self.base, path)))
        return next((c for c in candidates if c in self.docs), None)


def _holder_kind(scope: Scope) -> str:
    """The keyword of the block a reference sits in (``global`` at the top level); the
    common ``pool`` is recognised without the keyword regex (20,000 of them, say)."""
    if not scope:
        return "global"
    doc, block = scope[-1]
    text, start = doc.text, block.start
    if text.startswith("pool", start) and not text[start + 4 : start + 5].isalnum():
        return "pool"
    return doc.keyword(block)


def include_target(doc: Document, node: Statement) -> str | None:
    """The path of ``include "PATH";`` (escapes applied), or None for another statement.
    Every statement of a tree is asked: its first word decides before it is tokenized."""
    if doc.keyword(node) != "include":
        return None
    tokens = doc.tokens(node)
    if (
        len(tokens) == 3
        and tokens[0].text.lower() == "include"
        and tokens[1].kind == "string"
        and tokens[2].text == ";"
    ):
        return string_value(tokens[1].text)
    return None
