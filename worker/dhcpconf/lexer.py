"""The dhcpd.conf lexer, mirroring ISC dhcpd's own (``common/conflex.c``).

dhcpd reads a config file as: ASCII whitespace (skipped), ``#`` comments to the end of the
line, ``"strings"`` with backslash escapes (which may contain ``;``, ``{``, ``#`` and even
newlines), names/numbers made of ``[A-Za-z0-9_-]`` (a name starts with a letter, a number with
a digit or ``-``), and every other single character as a punctuation token (``{ } ; , . : =``
and any non-ASCII byte). Keywords are matched case-insensitively; strings are case-sensitive.

Two scanners share these definitions, so they can never disagree about where a string or a
comment ends:

* :data:`STRUCTURE_RE` matches one whole statement at a time (its leading trivia, its tokens
  and the ``{ } ;`` that ends it) inside the regex engine, which keeps parsing a large file
  fast: Python code runs once per statement, not once per token.
* :func:`tokenize` produces every token, trivia included, for the few statements the failover
  model has to read word by word.
"""

from __future__ import annotations

import re
from typing import Literal, NamedTuple

#: dhcpd skips exactly what C's ``isascii(c) && isspace(c)`` accepts (not Unicode spaces).
_WS = r"[ \t\n\r\f\v]"

# What follows a backslash inside a string, as conflex.c's read_string() consumes it:
# ``\x`` + up to two hex digits, ``\0``-``\3`` + up to two octal digits, or any one character.
# A zero octal escape ended by a non-octal character drops that character and treats the
# next one as escaped again (a quirk of read_string); the leading group reproduces it, so a
# ``"`` swallowed that way does not end the string for us either. ``\Z`` keeps a backslash at
# end of file inside the (unterminated) string.
_ESCAPE = (
    r"\\(?:0{1,2}[^0-7])*"
    r"(?:x(?:[0-9A-Fa-f]{2}|[0-9A-Fa-f]?(?:[^0-9A-Fa-f]|\Z))|[0-3][0-7]{0,2}|[\s\S]|\Z)"
)
_STRING_OPEN = r'"(?:[^"\\]+|' + _ESCAPE + r")*"
#: A string token; group ``close`` is None when the file ends inside the string.
STRING_PATTERN = _STRING_OPEN + r'(?P<close>")?'
COMMENT_PATTERN = r"#[^\n]*"

#: One statement per match: leading trivia (``lead``), then the tokens (``body``, which may
#: hold strings and comments), then the terminator ``{``, ``}`` or ``;`` (``term``, empty at
#: the end of the file). Possessive quantifiers: nothing here ever needs to backtrack.
STRUCTURE_RE = re.compile(
    r"(?P<lead>(?:" + _WS + r"++|" + COMMENT_PATTERN + r"+)*+)"
    r'(?P<body>(?:[^"#{};]++|' + _STRING_OPEN + r'"?|' + COMMENT_PATTERN + r"+)*+)"
    r"(?P<term>[{};]|\Z)"
)

TokenKind = Literal["ws", "comment", "string", "word", "punct"]

_TOKEN_RE = re.compile(
    r"(?P<ws>" + _WS + r"+)"
    r"|(?P<comment>" + COMMENT_PATTERN + r")"
    r"|(?P<string>" + STRING_PATTERN + r")"
    r"|(?P<word>[A-Za-z0-9-][A-Za-z0-9_-]*)"
    r"|(?P<punct>[\s\S])"
)
_NUMBER_RE = re.compile(r"-?[0-9]+")


class Token(NamedTuple):
    """One lexical token; ``start`` is its offset in the whole file, so edits can find it."""

    kind: TokenKind
    text: str
    start: int

    @property
    def end(self) -> int:
        return self.start + len(self.text)

    @property
    def trivia(self) -> bool:
        """Whitespace and comments: kept for rendering, ignored by the grammar."""
        return self.kind == "ws" or self.kind == "comment"

    @property
    def unterminated(self) -> bool:
        """A string the file ends inside (dhcpd: "eof in string constant")."""
        return self.kind == "string" and (len(self.text) < 2 or not _closed(self.text))


def _closed(text: str) -> bool:
    m = re.fullmatch(STRING_PATTERN, text)
    return m is not None and m.group("close") is not None


def tokenize(text: str, start: int = 0, end: int | None = None) -> list[Token]:
    """Every token of ``text[start:end]``, trivia included; their texts concatenate back."""
    stop = len(text) if end is None else end
    out: list[Token] = []
    for m in _TOKEN_RE.finditer(text, start, stop):
        kind = m.lastgroup
        assert kind is not None
        out.append(Token(kind, m.group(), m.start()))  # type: ignore[arg-type]
    return out


def significant(tokens: list[Token]) -> list[Token]:
    """The tokens the grammar sees (no whitespace, no comments)."""
    return [t for t in tokens if not t.trivia]


def is_number(text: str) -> bool:
    """Whether dhcpd's lexer returns a NUMBER token for ``text`` (``-`` then digits, or digits)."""
    return _NUMBER_RE.fullmatch(text) is not None


def string_value(token_text: str) -> str:
    """The value of a string token as dhcpd reads it (escapes applied, quotes removed)."""
    if "\\" not in token_text and len(token_text) >= 2 and token_text.endswith('"'):
        return token_text[1:-1]
    body = token_text[1:-1] if _closed(token_text) else token_text[1:]
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        i += 1
        if c != "\\":
            out.append(c)
            continue
        if i >= len(body):
            break
        c = body[i]
        i += 1
        simple = {"t": "\t", "r": "\r", "n": "\n", "b": "\b"}
        if c in simple:
            out.append(simple[c])
        elif c == "x":
            digits = re.match(r"[0-9A-Fa-f]{0,2}", body[i:])
            assert digits is not None
            i += len(digits.group())
            out.append(chr(int(digits.group() or "0", 16)))
        elif c in "0123":
            digits = re.match(r"[0-7]{0,2}", body[i:])
            assert digits is not None
            i += len(digits.group())
            out.append(chr(int(c + digits.group(), 8)))
        else:
            out.append(c)
    return "".join(out)


def quote(value: str) -> str:
    """A string token whose :func:`string_value` is ``value``."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
