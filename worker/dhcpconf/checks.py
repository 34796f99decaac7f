"""Checks on failover peers: alone (what dhcpd rejects) and as a pair (what it cannot see).

Two guards use the same list of per-peer checks, each with its own ``code``:

* :func:`validate` -- before any edit, a ConfigError for every failover problem dhcpd itself
  rejects (a primary without split/hba or mclt, a peer without pools, a pool naming an
  undeclared peer, a value that is not a number ...). The engine never edits a file dhcpd
  would refuse: the edit could hide the problem ("fix" the file) or build on a misreading.
* :func:`check_pair` -- before a change, every violation of either half *and* of the pair.
  Many wrong pairs pass ``dhcpd -t`` (both servers secondary, split and hba together, port
  70000, a negative mclt, no ``address``), and dhcpd checks one file at a time anyway, so
  these checks are the only guard against two servers that cannot talk.

What is odd but harmless is a :class:`ConfigWarning`, not a violation: ``mclt`` on the
secondary is accepted by dhcpd and never used (the secondary takes the primary's MCLT from
the failover CONNECT message: isc-dhcp ``server/failover.c``, ``state->mclt =
link->imsg->mclt``), so a change goes ahead, leaves it as it is and says so.

Every violation and warning says precisely what is wrong and where (file and line); nothing
is ever "fixed" silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from worker.dhcpconf.configset import ConfigSet
from worker.dhcpconf.failover import NUMERIC_KEYS, PeerDecl, PeerParam, Reference, Role
from worker.dhcpconf.lexer import is_number
from worker.errors import ConfigError, PairMismatch, PeerNotFound, Rejected, RoleMismatch

#: dhcpd's DEFAULT_FAILOVER_PORT, used for an absent ``port`` / ``peer port``.
DEFAULT_PORT = 647
_U32 = 2**32 - 1
_HBA_RE = re.compile(r"[0-9A-Fa-f]{1,2}(?::[0-9A-Fa-f]{1,2}){31}")
_NUMERIC = NUMERIC_KEYS | {"peer port", "peer max-response-delay", "peer max-unacked-updates"}


@dataclass(frozen=True)
class Violation:
    """One failed check: error class, code, message, where, and whether dhcpd rejects it."""

    kind: type[Rejected]
    code: str
    message: str
    file: str
    line: int | None
    column: int | None = None
    dhcpd_rejects: bool = False

    @property
    def where(self) -> str:
        return self.file if self.line is None else f"{self.file}:{self.line}"

    def as_dict(self) -> dict[str, object]:
        return {
            "code": self.code,
            "message": self.message,
            "file": self.file,
            "line": self.line,
            "column": self.column,
        }


@dataclass(frozen=True)
class ConfigWarning:
    """Something a change should report but that does not stop it. ``role``: the server of
    the pair it is about, when a pair check found it (None: the file's own server)."""

    code: str
    message: str
    file: str
    line: int | None
    role: Role | None = None

    @property
    def where(self) -> str:
        return self.file if self.line is None else f"{self.file}:{self.line}"


def validate(cs: ConfigSet) -> None:
    """ConfigError for the first failover problem in ``cs`` that dhcpd would reject."""
    for ref in cs.references:
        problem = _reference_problem(cs, ref)
        if problem is not None:
            code, message = problem
            line = ref.doc.line(ref.node.start)
            raise ConfigError(
                f"failover peer {ref.name!r} {message}",
                file=ref.doc.filename,
                line=line,
                column=ref.doc.location(ref.node.start)[1],
                code=code,
            )
    for name, decl in cs.declarations.items():
        pools = sum(1 for r in cs.references_to(name) if r.kind == "pool")
        for v in peer_violations(decl, pools=pools):
            if v.dhcpd_rejects:
                raise ConfigError(
                    f"failover peer {name!r}: {v.message} (dhcpd rejects this too; "
                    "fix the file first)",
                    file=v.file,
                    line=v.line,
                    column=v.column,
                    code=v.code,
                )


def _reference_problem(cs: ConfigSet, ref: Reference) -> tuple[str, str] | None:
    """(code, message) when dhcpd refuses this ``failover peer NAME;`` statement."""
    if ref.name not in cs.declarations:
        return "undeclared_peer", "is referenced but not declared (dhcpd: failover peer not found)"
    if ref.kind not in ("pool", "shared-network"):
        return (
            "peer_reference_misplaced",
            f"is referenced in a {ref.kind}, not in a pool (dhcpd: failover peers may only "
            "be defined in shared-network declarations and the outer scope)",
        )
    if ref.kind == "pool" and not ref.quoted:
        return (
            "peer_name_not_quoted",
            'is named without quotes in a pool (dhcpd: expecting string); write "NAME"',
        )
    return None


def check_pair(primary: ConfigSet, secondary: ConfigSet, name: str) -> list[ConfigWarning]:
    """Raise the first violation (PeerNotFound, RoleMismatch or PairMismatch) for the
    relationship ``name`` between ``primary`` and ``secondary``; ``detail`` lists them all.
    A pair without violations gives its warnings (:func:`pair_warnings`)."""
    found = pair_violations(primary, secondary, name)
    if found:
        first = found[0]
        raise first.kind(
            f"{first.where}: failover peer {name!r}: {first.message}",
            code=first.code,
            detail={
                "name": name,
                "file": first.file,
                "line": first.line,
                "column": first.column,
                "violations": [v.as_dict() for v in found],
            },
        )
    return pair_warnings(primary, secondary, name)


def pair_violations(primary: ConfigSet, secondary: ConfigSet, name: str) -> list[Violation]:
    """Every violation, most fundamental first."""
    missing = [
        Violation(
            PeerNotFound,
            "peer_not_found",
            f"not declared on the {side} ({cs.main}); declared there: "
            + (", ".join(repr(n) for n in sorted(cs.declarations)) or "none"),
            cs.main,
            None,
            None,
        )
        for side, cs in (("primary", primary), ("secondary", secondary))
        if name not in cs.declarations
    ]
    if missing:
        return missing
    p, s = primary.declarations[name], secondary.declarations[name]
    found = _roles(p, s)
    for side, decl in (("primary", p), ("secondary", s)):
        found += peer_violations(decl, side=side)
    found += _mirroring(p, s)
    return found


def pair_warnings(primary: ConfigSet, secondary: ConfigSet, name: str) -> list[ConfigWarning]:
    """What a sound pair may still hold that a change leaves alone and reports."""
    decl = secondary.declarations.get(name)
    mclt = decl.get("mclt") if decl is not None and decl.role == "secondary" else None
    if decl is None or mclt is None:
        return []
    return [
        ConfigWarning(
            "mclt_on_secondary",
            f"failover peer {name!r}: the secondary declares 'mclt {mclt.value}', which dhcpd "
            "accepts but does not use (the secondary takes the primary's mclt when the peers "
            "connect); it is left as it is",
            decl.file,
            decl.doc.line(mclt.node.start),
            "secondary",
        )
    ]


def _at(decl: PeerDecl, param: PeerParam | None = None) -> tuple[str, int, int]:
    """File, line, column of a statement (of the peer block when there is none)."""
    return decl.file, *decl.doc.location(param.node.start if param else decl.block.start)


def _role_at(decl: PeerDecl) -> tuple[str, int, int]:
    node = decl.role_node or decl.block
    return decl.file, *decl.doc.location(node.start)


def _roles(p: PeerDecl, s: PeerDecl) -> list[Violation]:
    found = [
        Violation(
            RoleMismatch,
            "role_missing",
            f"the {side}'s peer block declares no role (dhcpd then assumes primary); "
            f"it must say '{side};'",
            *_at(decl),
        )
        for side, decl in (("primary", p), ("secondary", s))
        if not decl.role_declared
    ]
    if found:
        return found
    if p.role == s.role:
        return [
            Violation(
                RoleMismatch,
                "roles_not_complementary",
                f"both servers declare '{p.role};' ({p.file}:{p.role_line} and "
                f"{s.file}:{s.role_line}); one must be primary and the other secondary",
                *_role_at(s if p.role == "primary" else p),
            )
        ]
    if p.role != "primary":
        return [
            Violation(
                RoleMismatch,
                "roles_swapped",
                "the server named as primary declares 'secondary;' and the server named as "
                f"secondary declares 'primary;' ({s.file}:{s.role_line})",
                *_role_at(p),
            )
        ]
    return []


def peer_violations(decl: PeerDecl, side: str = "", pools: int | None = None) -> list[Violation]:
    """One peer block on its own: required statements, numbers, ranges, and what belongs to
    the primary only. ``pools`` (when known) is how many pools reference it."""
    found: list[Violation] = []
    prefix = f"on the {side}: " if side else ""

    def add(code: str, message: str, param: PeerParam | None, rejects: bool) -> None:
        found.append(Violation(PairMismatch, code, prefix + message, *_at(decl, param), rejects))

    if decl.get("address") is None:
        add("address_missing", "'address' is missing", None, False)
    if decl.get("peer address") is None:
        add("peer_address_missing", "'peer address' is missing", None, True)
    for param in decl.params:
        for code, message, rejects in _value_problems(param):
            add(code, message, param, rejects)
    split, hba = decl.get("split"), decl.get("hba")
    if decl.role == "primary":
        if split is not None and hba is not None:
            add("split_and_hba", "the primary declares both 'split' and 'hba'; use one", hba, False)
        if split is None and hba is None:
            add("split_missing", "the primary declares neither 'split' nor 'hba'", None, True)
        if decl.get("mclt") is None:
            add("mclt_missing", "the primary declares no 'mclt'", None, True)
    else:  # mclt here is harmless: a warning (pair_warnings)
        for key, misplaced in (("split", split), ("hba", hba)):
            if misplaced is not None:
                add(
                    f"{key}_on_secondary",
                    f"the secondary declares '{key}', which only the primary may",
                    misplaced,
                    True,
                )
    if pools == 0:
        add("peer_without_pools", "no pool references it", None, True)
    return found


def _value_problems(param: PeerParam) -> list[tuple[str, str, bool]]:
    """(code, message, dhcpd rejects it) for a statement's value."""
    key, value = param.key, param.value
    if key == "hba":
        if _HBA_RE.fullmatch(value):
            return []
        return [("hba_invalid", "'hba' must be 32 colon-separated hexadecimal bytes", True)]
    if key not in _NUMERIC:
        return []
    if not is_number(value):
        return [("value_not_numeric", f"'{key}' must be a number, not {value!r}", True)]
    number = int(value)
    if key.endswith("port") and not 1 <= number <= 65535:
        return [("port_out_of_range", f"'{key} {value}' is outside 1-65535", False)]
    if key == "mclt" and number < 0:
        return [("mclt_negative", f"'mclt {value}' is negative", False)]
    if key == "split" and not 0 <= number <= 255:
        return [("split_out_of_range", f"'split {value}' is outside 0-255", True)]
    if not 0 <= number <= _U32:
        return [("value_out_of_range", f"'{key} {value}' is outside 0-{_U32}", False)]
    return []


def _mirroring(p: PeerDecl, s: PeerDecl) -> list[Violation]:
    """Each side's ``address``/``port`` must be the other's ``peer address``/``peer port``."""
    found: list[Violation] = []
    for mine, theirs in (("address", "peer address"), ("peer address", "address")):
        a, b = p.get(mine), s.get(theirs)
        if a is not None and b is not None and a.value.lower() != b.value.lower():
            found.append(
                Violation(
                    PairMismatch,
                    "address_mismatch",
                    f"the primary's '{mine} {a.value}' does not match the secondary's "
                    f"'{theirs} {b.value}' ({s.file}:{s.doc.line(b.node.start)})",
                    *_at(p, a),
                )
            )
    for mine, theirs in (("port", "peer port"), ("peer port", "port")):
        a, b = p.get(mine), s.get(theirs)
        pa, sb = _port(a), _port(b)
        if pa is not None and sb is not None and pa != sb:
            found.append(
                Violation(
                    PairMismatch,
                    "port_mismatch",
                    f"the primary's '{mine} {pa}' does not match the secondary's '{theirs} {sb}' "
                    f"(an absent port is {DEFAULT_PORT})",
                    *(_at(p, a) if a is not None else _at(s, b)),
                )
            )
    return found


def _port(param: PeerParam | None) -> int | None:
    if param is None:
        return DEFAULT_PORT
    return int(param.value) if is_number(param.value) else None
