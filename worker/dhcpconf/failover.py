"""The failover model: peer declarations and the pool references to them.

What dhcpd accepts inside ``failover peer NAME { ... }`` (``server/confpars.c``,
``parse_failover_peer``): a role (``primary;`` / ``secondary;``, primary when absent), and
statements that are each a keyword, optionally after ``peer`` (which makes ``address``,
``port``, ``max-response-delay`` and ``max-unacked-updates`` describe the partner), then a
value. Anything else is "invalid statement in peer declaration" for dhcpd, and a ConfigError
here: a block we cannot read statement by statement is a block we must not edit.

A reference is the statement ``failover peer NAME;``, in a pool (or, rarely, directly in a
shared-network). Names are case-sensitive, quoted or not; keywords are case-insensitive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from worker.dhcpconf.lexer import Token, string_value
from worker.dhcpconf.tree import Block, Document, Node, Statement

Role = Literal["primary", "secondary"]

#: Keywords whose value dhcpd reads as one NUMBER token.
NUMERIC_KEYS = frozenset(
    {
        "port",
        "max-response-delay",
        "max-unacked-updates",
        "mclt",
        "split",
        "load balance max seconds",
        "max-lease-misbalance",
        "max-lease-ownership",
        "max-balance",
        "min-balance",
        "auto-partner-down",
    }
)
#: Keywords that ``peer`` turns into the partner's setting (``peer address``, ``peer port``).
PARTNER_KEYS = frozenset({"address", "port", "max-response-delay", "max-unacked-updates"})
_SINGLE_WORD_KEYS = (NUMERIC_KEYS - {"load balance max seconds"}) | {"address", "hba"}
_LOAD_BALANCE = ("load", "balance", "max", "seconds")


@dataclass(frozen=True)
class ScopeRef:
    """A reference to a peer: the block holding ``failover peer "NAME";`` and where it is.

    ``kind`` is that block's keyword (``pool``, or ``shared-network`` for a reference made
    directly there); ``label`` is the path of enclosing declarations, outermost first.
    """

    kind: str
    label: str
    file: str
    line: int


@dataclass(frozen=True)
class Peer:
    """A ``failover peer`` declaration as the API exposes it."""

    name: str
    role: Role
    role_declared: bool
    params: dict[str, str]
    file: str
    line: int
    pools: tuple[ScopeRef, ...]


@dataclass(frozen=True)
class PeerParam:
    """One statement of a peer block: normalised key, value text and where the value is."""

    key: str
    value: str
    node: Statement
    value_tokens: tuple[Token, ...]

    @property
    def value_start(self) -> int:
        return self.value_tokens[0].start

    @property
    def value_end(self) -> int:
        return self.value_tokens[-1].end


@dataclass(frozen=True)
class PeerDecl:
    """A peer block with everything the checks and edits need to find in it."""

    name: str
    doc: Document
    block: Block
    role: Role
    role_declared: bool
    params: tuple[PeerParam, ...]
    role_node: Statement | None = None

    @property
    def file(self) -> str:
        return self.doc.filename

    @property
    def line(self) -> int:
        return self.doc.line(self.block.start)

    @property
    def role_line(self) -> int:
        """The line of the role statement (of the block when there is none)."""
        return self.doc.line(self.role_node.start) if self.role_node else self.line

    def get(self, key: str) -> PeerParam | None:
        """The statement dhcpd would use for ``key`` (the last one wins), or None."""
        found = [p for p in self.params if p.key == key]
        return found[-1] if found else None

    def values(self) -> dict[str, str]:
        return {p.key: p.value for p in self.params}


Scope = tuple[tuple[Document, Block], ...]


@dataclass(frozen=True)
class Reference:
    """A ``failover peer "NAME";`` statement and the declarations enclosing it (across
    included files: an included file's top level sits inside the block that includes it)."""

    name: str
    doc: Document
    node: Statement
    scope: Scope
    #: The keyword of the block holding it (``pool``, ``shared-network`` ...), or ``global``.
    #: dhcpd takes a reference only in a pool (where it makes the pool the peer's) or directly
    #: in a shared-network (where it counts for no pool).
    kind: str = "pool"
    #: Whether the name is written as a string: in a pool dhcpd wants one.
    quoted: bool = True

    @property
    def holder(self) -> tuple[Document, Block] | None:
        return self.scope[-1] if self.scope else None

    def scope_ref(self) -> ScopeRef:
        kind = self.kind
        label = " > ".join(doc.label(block) for doc, block in self.scope) or "global scope"
        return ScopeRef(kind, label, self.doc.filename, self.doc.line(self.node.start))


#: ``failover peer "NAME";`` as nearly every file writes it (no comments, no escapes).
_PLAIN_REFERENCE_RE = re.compile(
    r"failover[ \t\r\n]+peer[ \t\r\n]+"
    r'(?:"(?P<quoted>[^"\\\n]+)"|(?P<bare>[A-Za-z0-9-][A-Za-z0-9_-]*))[ \t\r\n]*;',
    re.IGNORECASE,
)


def failover_name(doc: Document, node: Node) -> str | None:
    """``NAME`` of a ``failover peer NAME {`` header or ``failover peer NAME;`` statement.

    None for anything else, including ``failover peer NAME state { ... }`` (lease-file state).
    """
    found = failover_reference(doc, node)
    return found[0] if found is not None else None


def failover_reference(doc: Document, node: Node) -> tuple[str, bool] | None:
    """:func:`failover_name` and whether the name is written as a string."""
    if isinstance(node, Statement):  # the common shape, without tokenizing (large files)
        plain = _PLAIN_REFERENCE_RE.fullmatch(doc.text, node.start, node.end)
        if plain is not None:
            quoted = plain.group("quoted")
            return (quoted, True) if quoted is not None else (plain.group("bare"), False)
    tokens = doc.tokens(node)
    if isinstance(node, Statement):
        if not tokens or tokens[-1].text != ";":
            return None
        tokens = tokens[:-1]
    if len(tokens) != 3 or [t.text.lower() for t in tokens[:2]] != ["failover", "peer"]:
        return None
    name = tokens[2]
    if name.kind == "string":
        return string_value(name.text), True
    if name.kind == "word":
        return name.text, False
    return None


def read_peer(doc: Document, block: Block, name: str) -> PeerDecl:
    """Read a peer block statement by statement; ConfigError at the first we cannot."""
    role: Role = "primary"
    role_node: Statement | None = None
    params: list[PeerParam] = []
    for node in block.body:
        if isinstance(node, Block):
            raise doc.error(
                f"failover peer {name!r}: unexpected block in peer declaration", node.start
            )
        tokens = doc.tokens(node)
        if not node.terminated or len(tokens) < 2:
            raise doc.error(
                f"failover peer {name!r}: statement not understood (expected 'keyword value;')",
                node.start,
            )
        words = tokens[:-1]
        partner = False
        while words and words[0].text.lower() == "peer":
            partner, words = True, words[1:]
        if len(words) == 1 and words[0].text.lower() in ("primary", "secondary"):
            role = "primary" if words[0].text.lower() == "primary" else "secondary"
            role_node = node
            continue
        key, value_tokens = _split_key(words)
        if key is None:
            bad = words[0] if words else tokens[0]
            raise doc.error(
                f"failover peer {name!r}: unrecognised statement {doc.label(node)!r} "
                "(dhcpd: invalid statement in peer declaration)",
                bad.start,
                code="peer_statement_unrecognised",
            )
        if not value_tokens:
            raise doc.error(f"failover peer {name!r}: {key!r} has no value", node.start)
        if partner and key in PARTNER_KEYS:
            key = "peer " + key
        params.append(PeerParam(key, _value_text(value_tokens), node, tuple(value_tokens)))
    return PeerDecl(name, doc, block, role, role_node is not None, tuple(params), role_node)


def _split_key(words: list[Token]) -> tuple[str | None, list[Token]]:
    lowered = [w.text.lower() for w in words]
    if lowered and lowered[0] in _SINGLE_WORD_KEYS and words[0].kind == "word":
        return lowered[0], words[1:]
    if tuple(lowered[:4]) == _LOAD_BALANCE:
        return " ".join(_LOAD_BALANCE), words[4:]
    return None, []


def _value_text(tokens: list[Token]) -> str:
    """The value as dhcpd reads it: tokens joined, a space only between two names."""
    out: list[str] = []
    for i, tok in enumerate(tokens):
        if i and tok.kind in ("word", "string") and tokens[i - 1].kind in ("word", "string"):
            out.append(" ")
        out.append(tok.text)
    return "".join(out)
