"""Where a dhcpd.conf holds key material, so a diff shown to others can hide it.

dhcpd reads key material in one place: ``secret`` inside ``key NAME { algorithm ...; secret
...; }`` (isc-dhcp ``common/parse.c``, ``parse_key``), the value a quoted string or base64
that the lexer may cut into several tokens (``parse_base64`` reads tokens until one is not
base64). A ``key`` block may stand in any scope (``parse_executable_statement``), so every
``secret`` statement counts, wherever it is. An LDAP build also reads the LDAP server's
password from dhcpd.conf (``ldap-password "...";``, or ``option server.ldap-password``:
``server/stables.c``); a credential, hidden the same way.

A span is the value of such a statement: from its first token after the keyword to its last
before the ``;``. :func:`redact_line` replaces the part of a line inside a span with
``"<redacted>"`` where the span starts and with nothing on the lines it continues over, so a
diff keeps its lines and its line numbers.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

from worker.dhcpconf.lexer import Token
from worker.dhcpconf.tree import Document, Statement, parse, walk
from worker.errors import ConfigError

REDACTED = '"<redacted>"'
_SECRET_KEYWORDS = frozenset({"secret", "ldap-password"})
#: For a text that does not parse (never one a plan produced): the rest of the line.
_FALLBACK = re.compile(r"\b(?:secret|ldap-password)\b[ \t]*([^;\n]*)", re.IGNORECASE)


@dataclass(frozen=True)
class Secrets:
    """The sorted, non-overlapping secret spans of one text."""

    spans: tuple[tuple[int, int], ...]

    def __bool__(self) -> bool:
        return bool(self.spans)

    def redact_line(self, offset: int, line: str) -> str:
        """``line`` (which starts at ``offset`` in the text) with its secret parts hidden;
        its line ending is kept."""
        if not self.spans:
            return line
        body_end = offset + len(line.rstrip("\r\n"))
        i = bisect.bisect_right(self.spans, (offset, body_end)) - 1
        i = max(i, 0)
        out: list[str] = []
        pos = offset
        for start, end in self.spans[i:]:
            if start >= body_end:
                break
            if end <= pos:
                continue
            cut_from, cut_to = max(start, pos), min(end, body_end)
            out.append(line[pos - offset : cut_from - offset])
            if start >= offset:  # the span starts on this line
                out.append(REDACTED)
            pos = cut_to
        if pos == offset:
            return line
        out.append(line[pos - offset :])
        return "".join(out)


NO_SECRETS = Secrets(())


def secrets(text: str, filename: str) -> Secrets:
    """The secret spans of ``text`` (``filename`` as it was parsed: the parse is kept)."""
    lowered = text.lower()  # a cheap look first (a case-blind regex is 10x slower)
    if "secret" not in lowered and "ldap-password" not in lowered:
        return NO_SECRETS
    try:
        doc = parse(text, filename)
    except ConfigError:
        return Secrets(tuple(m.span(1) for m in _FALLBACK.finditer(text) if m.group(1)))
    spans = []
    for node, _ in walk(doc.items):
        if isinstance(node, Statement) and (value := _secret_value(doc, node)):
            spans.append((value[0].start, value[-1].end))
    return Secrets(tuple(spans))


def _secret_value(doc: Document, node: Statement) -> list[Token]:
    """The value tokens of a statement holding key material, else []."""
    keyword = doc.keyword(node)
    if keyword not in _SECRET_KEYWORDS and keyword != "option":
        return []
    tokens = doc.tokens(node)
    if node.terminated:
        tokens = tokens[:-1]
    if keyword in _SECRET_KEYWORDS:
        return tokens[1:]
    words = [t.text.lower() for t in tokens[1:4]]
    return tokens[4:] if words == ["server", ".", "ldap-password"] else []
