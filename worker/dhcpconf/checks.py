"""Pair checks: do the two halves of a relationship describe one relationship?

Many wrong pairs pass ``dhcpd -t`` (both servers secondary, mclt on a secondary, split and hba
together, port 70000, a negative mclt, no ``address``), and dhcpd checks one file at a time
anyway, so these checks are the only guard against a change that would leave two servers
that cannot talk to each other. Every violation has its own ``code`` and points at the file
and line concerned; nothing is ever "fixed" silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from worker.dhcpconf.configset import ConfigSet
from worker.dhcpconf.failover import NUMERIC_KEYS, PeerDecl, PeerParam
from worker.dhcpconf.lexer import is_number
from worker.errors import PairMismatch, PeerNotFound, Rejected, RoleMismatch

#: dhcpd's DEFAULT_FAILOVER_PORT, used for an absent ``port`` / ``peer port``.
DEFAULT_PORT = 647
_U32 = 2**32 - 1
_HBA_RE = re.compile(r"[0-9A-Fa-f]{1,2}(?::[0-9A-Fa-f]{1,2}){31}")


@dataclass(frozen=True)
class Violation:
    """One failed check: which error class, its code, a precise message and where."""

    kind: type[Rejected]
    code: str
    message: str
    file: str
    line: int | None

    def error(self, name: str, others: list[Violation]) -> Rejected:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return self.kind(
            f"{where}: failover peer {name!r}: {self.message}",
            code=self.code,
            detail={
                "name": name,
                "file": self.file,
                "line": self.line,
                "violations": [
                    {"code": v.code, "message": v.message, "file": v.file, "line": v.line}
                    for v in others
                ],
            },
        )


def check_pair(primary: ConfigSet, secondary: ConfigSet, name: str) -> None:
    """Raise the first violation (PeerNotFound, RoleMismatch or PairMismatch) for the
    relationship ``name`` between ``primary`` and ``secondary``; ``detail`` lists them all."""
    found = pair_violations(primary, secondary, name)
    if found:
        raise found[0].error(name, found)


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
        )
        for side, cs in (("primary", primary), ("secondary", secondary))
        if name not in cs.declarations
    ]
    if missing:
        return missing
    p, s = primary.declarations[name], secondary.declarations[name]
    found = _roles(p, s)
    for side, decl in (("primary", p), ("secondary", s)):
        found += _values(side, decl)
    found += _placement(p, s)
    found += _mirroring(p, s)
    return found


def _at(decl: PeerDecl, param: PeerParam | None = None) -> tuple[str, int]:
    line = decl.doc.line(param.node.start) if param else decl.line
    return decl.file, line


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
                f"both servers declare '{p.role};' ({p.file}:{p.line} and {s.file}:{s.line}); "
                "one must be primary and the other secondary",
                *_at(p if p.role == "secondary" else s),
            )
        ]
    if p.role != "primary":
        return [
            Violation(
                RoleMismatch,
                "roles_swapped",
                f"the server named as primary declares 'secondary;' and the server named as "
                f"secondary declares 'primary;' ({s.file}:{s.line})",
                *_at(p),
            )
        ]
    return []


def _values(side: str, decl: PeerDecl) -> list[Violation]:
    """One side on its own: required statements, numbers, ranges."""
    found: list[Violation] = []

    def add(kind: type[Rejected], code: str, message: str, param: PeerParam | None) -> None:
        found.append(Violation(kind, code, f"on the {side}: {message}", *_at(decl, param)))

    for key, code in (("address", "address_missing"), ("peer address", "peer_address_missing")):
        if decl.get(key) is None:
            add(PairMismatch, code, f"'{key}' is missing", None)
    for param in decl.params:
        key, value = param.key, param.value
        if key in NUMERIC_KEYS or key in ("peer port", "peer max-response-delay",
                                          "peer max-unacked-updates"):
            if not is_number(value):
                add(PairMismatch, "value_not_numeric",
                    f"'{key}' must be a number, not {value!r}", param)
                continue
            number = int(value)
            if key.endswith("port") and not 1 <= number <= 65535:
                add(PairMismatch, "port_out_of_range",
                    f"'{key} {value}' is outside 1-65535", param)
            elif key == "mclt" and number < 0:
                add(PairMismatch, "mclt_negative", f"'mclt {value}' is negative", param)
            elif key == "split" and not 0 <= number <= 255:
                add(PairMismatch, "split_out_of_range",
                    f"'split {value}' is outside 0-255", param)
            elif not 0 <= number <= _U32:
                add(PairMismatch, "value_out_of_range",
                    f"'{key} {value}' is outside 0-{_U32}", param)
        elif key == "hba" and not _HBA_RE.fullmatch(value):
            add(PairMismatch, "hba_invalid",
                "'hba' must be 32 colon-separated hexadecimal bytes", param)
    return found


def _placement(p: PeerDecl, s: PeerDecl) -> list[Violation]:
    """Load balancing and mclt belong to the primary only, and exactly one of split/hba."""
    found: list[Violation] = []
    for key in ("split", "hba", "mclt"):
        param = s.get(key)
        if param is not None:
            found.append(Violation(
                PairMismatch, f"{key}_on_secondary",
                f"the secondary declares '{key}', which only the primary may", *_at(s, param),
            ))
    split, hba = p.get("split"), p.get("hba")
    if split is not None and hba is not None:
        found.append(Violation(
            PairMismatch, "split_and_hba",
            "the primary declares both 'split' and 'hba'; use one of them", *_at(p, hba),
        ))
    if split is None and hba is None:
        found.append(Violation(
            PairMismatch, "split_missing",
            "the primary declares neither 'split' nor 'hba'", *_at(p),
        ))
    if p.get("mclt") is None:
        found.append(Violation(
            PairMismatch, "mclt_missing", "the primary declares no 'mclt'", *_at(p),
        ))
    return found


def _mirroring(p: PeerDecl, s: PeerDecl) -> list[Violation]:
    """Each side's ``address``/``port`` must be the other's ``peer address``/``peer port``."""
    found: list[Violation] = []
    for mine, theirs, who in (("address", "peer address", "primary"),
                              ("peer address", "address", "secondary")):
        a, b = p.get(mine), s.get(theirs)
        if a is not None and b is not None and a.value.lower() != b.value.lower():
            found.append(Violation(
                PairMismatch, "address_mismatch",
                f"the {who}'s address differs: primary '{mine} {a.value}' "
                f"({p.file}:{p.doc.line(a.node.start)}) but secondary '{theirs} {b.value}' "
                f"({s.file}:{s.doc.line(b.node.start)})",
                *_at(p, a),
            ))
    for mine, theirs, who in (("port", "peer port", "primary"),
                              ("peer port", "port", "secondary")):
        a, b = p.get(mine), s.get(theirs)
        pa, sb = _port(a), _port(b)
        if pa is not None and sb is not None and pa != sb:
            found.append(Violation(
                PairMismatch, "port_mismatch",
                f"the {who}'s port differs: primary '{mine} {pa}' but secondary "
                f"'{theirs} {sb}' (an absent port is {DEFAULT_PORT})",
                *(_at(p, a) if a is not None else _at(s, b)),
            ))
    return found


def _port(param: PeerParam | None) -> int | None:
    if param is None:
        return DEFAULT_PORT
    return int(param.value) if is_number(param.value) else None
