"""The lossless tree of one dhcpd.conf file: Statement and Block nodes over the exact text.

dhcpd's grammar has one shape at the level that matters for editing: a *statement* is a run
of tokens ended by ``;``, a *block* is a run of tokens ended by ``{``, then a body of
statements and blocks, then ``}``. Each node owns the trivia (whitespace, blank lines,
comments) that precedes it, from ``lead`` to ``start``; a block also owns the trivia before
its ``}``, and the document the trivia at the end of the file. The spans tile the file, so
:func:`render` -- the concatenation of the nodes' texts -- gives the file back byte for byte.
Nodes never copy text; edits are span replacements on the original (see
:mod:`worker.dhcpconf.edits`), so nothing outside an edited span can change.

A ``;`` after a ``}`` (``key X { ... };``) is an empty statement; ``if``/``elsif``/``else``
are consecutive blocks; a record type (``option x code 1 = { text, text };``) is a block whose
body ends with an unterminated statement. None of that matters to the failover edits, and all
of it renders back exactly.
"""

from __future__ import annotations

import bisect
import functools
import gc
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from worker.dhcpconf.lexer import STRUCTURE_RE, Token, significant, tokenize
from worker.errors import ConfigError


@dataclass(slots=True, eq=False)
class Statement:
    """Trivia from ``lead``, then tokens from ``start`` up to and including ``;``.

    ``terminated`` is False only for a statement cut short by a ``}``.
    """

    lead: int
    start: int
    end: int
    terminated: bool = True


@dataclass(slots=True, eq=False)
class Block:
    """Trivia from ``lead``, ``header {`` up to ``head_end``, the body, trivia, ``}`` at
    ``close``; ``end`` is just past the ``}``."""

    lead: int
    start: int
    head_end: int
    body: list[Node]
    close: int
    end: int


Node = Statement | Block


@dataclass(eq=False)
class Document:
    """One parsed file: its text, its name (for messages) and its top-level nodes."""

    text: str
    filename: str
    items: list[Node]
    _newlines: list[int] | None = field(default=None, repr=False)

    @property
    def tail(self) -> int:
        """Where the trivia at the end of the file starts."""
        return self.items[-1].end if self.items else 0

    def location(self, offset: int) -> tuple[int, int]:
        """1-based (line, column) of an offset, as dhcpd counts them."""
        if self._newlines is None:
            self._newlines = [m.start() for m in re.finditer("\n", self.text)]
        line = bisect.bisect_left(self._newlines, offset)
        line_start = self._newlines[line - 1] + 1 if line else 0
        return line + 1, offset - line_start + 1

    def line(self, offset: int) -> int:
        return self.location(offset)[0]

    def error(self, message: str, offset: int, **kwargs: Any) -> ConfigError:
        """A ConfigError pointing at ``offset`` in this file."""
        line, column = self.location(offset)
        return ConfigError(message, file=self.filename, line=line, column=column, **kwargs)

    def tokens(self, node: Node) -> list[Token]:
        """The significant tokens of a statement, or of a block's header (without ``{``)."""
        return significant(tokenize(self.text, node.start, _header_end(node)))

    def keyword(self, node: Node) -> str:
        """The first token, lower-cased (dhcpd keywords are case-insensitive)."""
        m = _WORD_RE.match(self.text, node.start)
        return m.group().lower() if m else self.text[node.start]

    def label(self, node: Node) -> str:
        """A header or statement on one line: comments dropped, spacing collapsed."""
        parts: list[str] = []
        gap = False
        for tok in tokenize(self.text, node.start, _header_end(node)):
            if tok.trivia:
                gap = True
                continue
            if gap and parts:
                parts.append(" ")
            parts.append(tok.text)
            gap = False
        return "".join(parts).removesuffix(";").rstrip()


_WORD_RE = re.compile(r"[A-Za-z0-9-][A-Za-z0-9_-]*")


def _header_end(node: Node) -> int:
    return node.head_end - 1 if isinstance(node, Block) else node.end


def body_end(block: Block) -> int:
    """Where the trivia before a block's ``}`` starts."""
    return block.body[-1].end if block.body else block.head_end


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building a large tree.

    A parse allocates a few objects per line and none of them forms a cycle, but each
    generation-2 pass would re-scan all of them: on a 5,000-subnet file that triples the time.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def parse(text: str, filename: str = "dhcpd.conf") -> Document:
    """Parse ``text`` losslessly.

    Raises ConfigError (file, line, column) when a brace or a string never closes or the
    file ends inside a statement: dhcpd rejects those too, and guessing would mean editing a
    file whose structure we do not know.

    The last few parses are kept (a Document is never changed once built): one change reads
    a file's includes, plans on it, and lists its candidate's includes to validate it, each
    from the same text. At most 8 are kept (a 1 MB file's tree takes about 6 MB);
    :func:`clear_parse_cache` forgets them.
    """
    return _parse_cached(text, filename)


@functools.lru_cache(maxsize=8)
def _parse_cached(text: str, filename: str) -> Document:
    with gc_paused():
        return _parse(text, filename)


def clear_parse_cache() -> None:
    """Forget the kept parses (a benchmark timing the parse itself wants this)."""
    _parse_cached.cache_clear()


def _parse(text: str, filename: str) -> Document:
    doc = Document(text, filename, [])
    items = doc.items
    stack: list[tuple[int, int, int, list[Node]]] = []  # lead, start, head_end, parent items
    for m in STRUCTURE_RE.finditer(text):
        lead, start, end = m.start(), m.start("body"), m.end()
        if m.start("term") == end:  # the end of the file
            if start < end:
                raise _dangling(doc, start)
            break
        char = text[end - 1]
        if char == ";":
            items.append(Statement(lead, start, end))
        elif char == "{":
            stack.append((lead, start, end, items))
            items = []
        else:
            if not stack:
                raise doc.error("'}' without a matching '{'", end - 1)
            if start < end - 1:  # tokens with no ';' before the '}'
                items.append(Statement(lead, start, _last_token_end(text, start, end - 1), False))
            b_lead, b_start, head_end, parent = stack.pop()
            parent.append(Block(b_lead, b_start, head_end, items, end - 1, end))
            items = parent
    if stack:
        raise doc.error("'{' is never closed", stack[-1][1])
    return doc


def _dangling(doc: Document, start: int) -> ConfigError:
    for tok in tokenize(doc.text, start):
        if tok.unterminated:
            return doc.error("end of file inside a string constant", tok.start)
    return doc.error("statement not terminated by ';' at end of file", start)


def _last_token_end(text: str, start: int, end: int) -> int:
    last = start
    for tok in tokenize(text, start, end):
        if not tok.trivia:
            last = tok.end
    return last


def render(doc: Document) -> str:
    """The file again: the concatenation of every node's text."""
    parts: list[str] = []
    _render_into(doc.text, doc.items, parts)
    parts.append(doc.text[doc.tail :])
    return "".join(parts)


def _render_into(text: str, items: list[Node], parts: list[str]) -> None:
    for node in items:
        if isinstance(node, Block):
            parts.append(text[node.lead : node.head_end])
            _render_into(text, node.body, parts)
            parts.append(text[body_end(node) : node.end])
        else:
            parts.append(text[node.lead : node.end])


def walk(
    items: list[Node], ancestors: tuple[Block, ...] = ()
) -> Iterator[tuple[Node, tuple[Block, ...]]]:
    """Every statement and block, depth first, with the blocks enclosing it."""
    for node in items:
        yield node, ancestors
        if isinstance(node, Block):
            yield from walk(node.body, (*ancestors, node))
