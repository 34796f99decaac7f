"""The plan step of a change: both servers' candidate texts and their diffs, with no I/O.

The coordinator reads the live files, calls :func:`plan_modify` or :func:`plan_remove`, and
then stages, validates and commits what the returned :class:`ServerPlan` objects say. The pair
is checked before anything is computed (a wrong pair is a rejection, never a silent fix), and a
modify's candidates are checked again, so a change can never leave a pair that disagrees.

Everything here is pure and keeps no state between calls, so two plans may run at once in
two threads (the coordinator runs planning off the event loop).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from worker.dhcpconf import ConfigSet, PeerSettings, Role, check_pair
from worker.dhcpconf.checks import ConfigWarning
from worker.dhcpconf.diff import UnifiedDiff, unified_diff
from worker.dhcpconf.edits import Edit, Patch, modify_edit, remove_edit
from worker.errors import ConfigError, PairMismatch
from worker.messages import (
    DiffSummary,
    ModifyParams,
    RemoveParams,
    WarningInfo,
    safe_text,
)


@dataclass(frozen=True)
class ServerPlan:
    """What one server's files are now (``before``) and would become (``after``).

    ``patches``: per changed file, the edit's patches from ``before`` to ``after`` (the diff
    is computed from them; a file without them is diffed as one region). ``warnings``: what
    the plan noticed on this server without refusing (``mclt_on_secondary``,
    ``duplicate_statement``)."""

    server: str
    role: Role
    main: str
    before: dict[str, str]
    after: dict[str, str]
    patches: Mapping[str, tuple[Patch, ...]] = field(default_factory=dict)
    warnings: tuple[WarningInfo, ...] = ()

    @property
    def changed(self) -> bool:
        return self.before != self.after

    def changed_files(self) -> list[str]:
        return [path for path in self.after if self.after[path] != self.before.get(path)]

    def file_diffs(self, *, redact: bool = False) -> list[UnifiedDiff]:
        """The diff of each changed file (``redact``: key material hidden)."""
        return [
            unified_diff(
                path,
                self.before.get(path, ""),
                self.after[path],
                self.patches.get(path, ()),
                redact=redact,
            )
            for path in self.changed_files()
        ]

    def diff(self) -> str:
        """A unified diff of every changed file, with ``a/<path>`` and ``b/<path>`` headers:
        complete and as the files hold it (the offline ``plan`` prints this)."""
        return "".join(d.text for d in self.file_diffs())


@dataclass(frozen=True)
class ReportDiff:
    """A server's diff as its result event and journal carry it (docs/contract.md): key
    material redacted, non-UTF-8 bytes as U+FFFD (``non_utf8``), cut at a line boundary
    at or below the size cap (``truncated``; ``full`` then describes the whole of it)."""

    text: str
    truncated: bool = False
    full: DiffSummary | None = None
    non_utf8: bool = False


def report_diff(plan: ServerPlan, max_bytes: int) -> ReportDiff:
    """The event's diff of ``plan``: ``bytes``/``sha256`` of ``full`` are of the UTF-8 of the
    redacted, U+FFFD-substituted text, i.e. of what the event would carry uncut."""
    diffs = plan.file_diffs(redact=True)
    raw = "".join(d.text for d in diffs)
    text = safe_text(raw)
    non_utf8 = text != raw
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return ReportDiff(text, non_utf8=non_utf8)
    cut = data.rfind(b"\n", 0, max(max_bytes, 0)) + 1  # "\n" never ends a UTF-8 sequence
    return ReportDiff(
        data[:cut].decode("utf-8"),
        truncated=True,
        full=DiffSummary(
            sha256=hashlib.sha256(data).hexdigest(),
            bytes=len(data),
            lines=text.count("\n"),
            added=sum(d.added for d in diffs),
            removed=sum(d.removed for d in diffs),
        ),
        non_utf8=non_utf8,
    )


def settings_from_params(p: ModifyParams) -> PeerSettings:
    """Micetro's parameters in relationship terms; PartnerPort defaults to Port."""
    return PeerSettings(
        mclt=p.mclt,
        primary_port=p.port,
        secondary_port=p.partner_port if p.partner_port is not None else p.port,
        load_balance_max_seconds=p.load_balance_max_seconds,
        max_response_delay=p.max_response_delay,
        max_unacked_updates=p.max_unacked_updates,
    )


def plan_modify(
    p: ModifyParams, primary: ConfigSet, secondary: ConfigSet
) -> tuple[ServerPlan, ServerPlan]:
    """Both candidates of a modify; rejects (PeerNotFound, RoleMismatch, PairMismatch,
    ConfigError) before computing anything if the pair is wrong."""
    found = check_pair(primary, secondary, p.name)
    settings = settings_from_params(p)
    new_primary = modify_edit(primary, p.name, settings)
    new_secondary = modify_edit(secondary, p.name, settings)
    check_pair(
        ConfigSet.parse(new_primary.texts, primary.main, primary.base),
        ConfigSet.parse(new_secondary.texts, secondary.main, secondary.base),
        p.name,
    )
    return (
        _server_plan(p.primary_server, "primary", primary, new_primary, _about("primary", found)),
        _server_plan(
            p.secondary_server, "secondary", secondary, new_secondary, _about("secondary", found)
        ),
    )


def _about(role: Role, found: Iterable[ConfigWarning]) -> list[ConfigWarning]:
    """The pair check's warnings about the server of ``role``."""
    return [w for w in found if (w.role or "secondary") == role]


def _server_plan(
    server: str, role: Role, cs: ConfigSet, edit: Edit, pair: Iterable[ConfigWarning]
) -> ServerPlan:
    warnings = tuple(
        WarningInfo(code=w.code, message=f"{w.where}: {w.message}", server=server)
        for w in (*pair, *edit.warnings)
    )
    return ServerPlan(server, role, cs.main, cs.texts(), edit.texts, edit.patches, warnings)


def remove_partners(cs: ConfigSet, names: Sequence[str]) -> dict[str, tuple[Role, str]]:
    """For each name, this server's role and the partner's address (``peer address``), which
    the coordinator looks up in the inventory to find the other server."""
    found: dict[str, tuple[Role, str]] = {}
    for name in names:
        decl = cs.declaration(name)
        partner = decl.get("peer address")
        if partner is None:
            raise PairMismatch(
                f"{decl.file}:{decl.line}: failover peer {name!r} has no 'peer address'; "
                "cannot tell which server is its partner",
                code="peer_address_missing",
                detail={"name": name, "file": decl.file, "line": decl.line},
            )
        found[name] = (decl.role, partner.value)
    return found


def plan_remove(
    p: RemoveParams,
    configs: Mapping[str, ConfigSet],
    pairs: Mapping[str, tuple[str, str]],
) -> list[ServerPlan]:
    """Every involved server's candidate for removing ``p.names`` as one change.

    ``configs``: server name -> its ConfigSet; ``pairs``: relationship name -> (primary
    server, secondary server). Servers come in order of first mention, ``p.server`` first.
    """
    order: list[str] = [p.server]
    found: dict[str, list[ConfigWarning]] = {}
    for name in p.names:
        if name not in pairs:
            raise ConfigError(f"no server pair given for relationship {name!r}")
        primary, secondary = pairs[name]
        warnings = check_pair(configs[primary], configs[secondary], name)
        found.setdefault(primary, []).extend(_about("primary", warnings))
        found.setdefault(secondary, []).extend(_about("secondary", warnings))
        order += [s for s in (primary, secondary) if s not in order]
    plans: list[ServerPlan] = []
    for server in order:
        cs = configs[server]
        names = [n for n in p.names if server in pairs[n]]
        if not names:
            continue
        edit = remove_edit(cs, names, p.deconfigure_action)
        _check_removed(ConfigSet.parse(edit.texts, cs.main, cs.base), names)
        role: Role = "primary" if pairs[names[0]][0] == server else "secondary"
        plans.append(_server_plan(server, role, cs, edit, found.get(server, [])))
    return plans


def _check_removed(candidate: ConfigSet, names: Sequence[str]) -> None:
    """The candidate must hold neither the peers nor any reference to them."""
    for name in names:
        left = [r for r in candidate.references if r.name == name]
        if name in candidate.declarations or left:
            raise ConfigError(
                f"failover peer {name!r} is still declared or referenced after removal",
                file=candidate.main,
            )
