"""The plan step of a change: both servers' candidate texts and their diffs, with no I/O.

The coordinator reads the live files, calls :func:`plan_modify` or :func:`plan_remove`, and
then stages, validates and commits what the returned :class:`ServerPlan` objects say. The pair
is checked before anything is computed (a wrong pair is a rejection, never a silent fix), and a
modify's candidates are checked again, so a change can never leave a pair that disagrees.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from worker.dhcpconf import ConfigSet, PeerSettings, Role, check_pair, modify, remove
from worker.errors import ConfigError, PairMismatch
from worker.messages import ModifyParams, RemoveParams


@dataclass(frozen=True)
class ServerPlan:
    """What one server's files are now (``before``) and would become (``after``)."""

    server: str
    role: Role
    main: str
    before: dict[str, str]
    after: dict[str, str]

    @property
    def changed(self) -> bool:
        return self.before != self.after

    def changed_files(self) -> list[str]:
        return [path for path in self.after if self.after[path] != self.before.get(path)]

    def diff(self) -> str:
        """A unified diff of every changed file, with ``a/<path>`` and ``b/<path>`` headers."""
        return "".join(
            _diff(path, self.before.get(path, ""), self.after[path])
            for path in self.changed_files()
        )


def _diff(path: str, before: str, after: str) -> str:
    name = path.lstrip("/")
    lines = difflib.unified_diff(
        before.splitlines(keepends=True),
        after.splitlines(keepends=True),
        fromfile=f"a/{name}",
        tofile=f"b/{name}",
    )
    # A last line without a newline would run into the next diff line: say so, as diff does.
    return "".join(
        line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines
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
    check_pair(primary, secondary, p.name)
    settings = settings_from_params(p)
    new_primary = modify(primary, p.name, settings)
    new_secondary = modify(secondary, p.name, settings)
    check_pair(
        ConfigSet.parse(new_primary, primary.main, primary.base),
        ConfigSet.parse(new_secondary, secondary.main, secondary.base),
        p.name,
    )
    return (
        ServerPlan(p.primary_server, "primary", primary.main, primary.texts(), new_primary),
        ServerPlan(
            p.secondary_server, "secondary", secondary.main, secondary.texts(), new_secondary
        ),
    )


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
    for name in p.names:
        if name not in pairs:
            raise ConfigError(f"no server pair given for relationship {name!r}")
        primary, secondary = pairs[name]
        check_pair(configs[primary], configs[secondary], name)
        order += [s for s in (primary, secondary) if s not in order]
    plans: list[ServerPlan] = []
    for server in order:
        cs = configs[server]
        names = [n for n in p.names if server in pairs[n]]
        if not names:
            continue
        after = remove(cs, names, p.deconfigure_action)
        _check_removed(ConfigSet.parse(after, cs.main, cs.base), names)
        role: Role = "primary" if pairs[names[0]][0] == server else "secondary"
        plans.append(ServerPlan(server, role, cs.main, cs.texts(), after))
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
