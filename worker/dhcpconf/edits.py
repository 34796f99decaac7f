"""Edits as pure functions: a ConfigSet in, the new text of every file out.

An edit is a list of :class:`Patch` (replace ``text[start:end]``) per file, applied to the
original text; every byte outside a patch is kept, so a modify's diff is the few lines it
must change. :func:`modify_edit` / :func:`remove_edit` hand the patches back with the texts
(:class:`Edit`): the diff is computed from them (:mod:`worker.dhcpconf.diff`), in time linear
in the size of the change, where a text diff of two large files is quadratic.

Removing a statement or block takes its own lines with it (its indentation, a comment
trailing it on the same line, the newline) and one of two blank lines it would leave side by
side, and nothing else: comments above it stay, they may describe more than it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from worker.dhcpconf.checks import ConfigWarning, validate
from worker.dhcpconf.configset import ConfigSet
from worker.dhcpconf.failover import PeerDecl, PeerParam, Reference, Role
from worker.dhcpconf.tree import Block, Document, Node, Statement
from worker.errors import Rejected
from worker.messages import DeconfigureAction


@dataclass(frozen=True)
class PeerSettings:
    """A modify in *relationship* terms; None keeps the current value."""

    mclt: int | None = None  # primary only, never added to the secondary
    primary_port: int | None = None  # Micetro Port: primary `port`, secondary `peer port`
    secondary_port: int | None = None  # PartnerPort: secondary `port`, primary `peer port`
    load_balance_max_seconds: int | None = None  # both
    max_response_delay: int | None = None  # both
    max_unacked_updates: int | None = None  # both

    def statements(self, role: Role) -> list[tuple[str, int]]:
        """The (peer-block keyword, value) pairs this change means on a server of ``role``."""
        if role == "primary":
            own = [
                ("mclt", self.mclt),
                ("port", self.primary_port),
                ("peer port", self.secondary_port),
            ]
        else:  # dhcpd takes mclt from the primary: never added to a secondary
            own = [("port", self.secondary_port), ("peer port", self.primary_port)]
        both = [
            ("load balance max seconds", self.load_balance_max_seconds),
            ("max-response-delay", self.max_response_delay),
            ("max-unacked-updates", self.max_unacked_updates),
        ]
        return [(key, value) for key, value in own + both if value is not None]

    def validate(self) -> None:
        """Ranges dhcpd itself would not catch (it takes port 70000 and a negative mclt)."""
        for key, value in self.statements("primary") + self.statements("secondary"):
            low, high = (1, 65535) if key.endswith("port") else (0, 2**32 - 1)
            if not low <= value <= high:
                raise Rejected(
                    f"{key} {value} is out of range {low}-{high}", code="value_out_of_range"
                )


@dataclass(frozen=True, order=True)
class Patch:
    """Replace ``text[start:end]`` by ``text`` (an empty ``text`` deletes)."""

    start: int
    end: int
    text: str = ""


def merge(patches: Sequence[Patch]) -> list[Patch]:
    """The patches sorted, as :func:`apply` applies them: overlapping deletions merge, a
    patch inside a deletion is dropped (its block is gone anyway); any other overlap is a
    bug in the edit."""
    merged: list[Patch] = []
    for p in sorted(patches, key=lambda p: (p.start, -p.end)):
        if merged and p.start < merged[-1].end:
            last = merged[-1]
            if p.end <= last.end and not last.text:
                continue  # inside a deleted span
            if not p.text and not last.text:
                merged[-1] = Patch(last.start, max(last.end, p.end))
                continue
            raise AssertionError(f"overlapping edits {last} and {p}")
        merged.append(p)
    return merged


def apply(text: str, patches: Sequence[Patch]) -> str:
    """``text`` with the patches applied (see :func:`merge`)."""
    out: list[str] = []
    pos = 0
    for p in merge(patches):
        out.append(text[pos : p.start])
        out.append(p.text)
        pos = p.end
    out.append(text[pos:])
    return "".join(out)


@dataclass(frozen=True)
class Edit:
    """An edit's result: the new text of every file of the set (unchanged files identical),
    the merged patches that turn each changed file's text into its new one, and what the
    edit noticed without refusing (duplicated statements)."""

    texts: dict[str, str]
    patches: Mapping[str, tuple[Patch, ...]] = field(default_factory=dict)
    warnings: tuple[ConfigWarning, ...] = ()


# -- modify ------------------------------------------------------------------------------------


def modify(cs: ConfigSet, name: str, settings: PeerSettings) -> dict[str, str]:
    """The new texts of :func:`modify_edit`."""
    return modify_edit(cs, name, settings).texts


def modify_edit(cs: ConfigSet, name: str, settings: PeerSettings) -> Edit:
    """Set the relationship's parameters in the peer block ``name``, for the role the block
    declares; statements already at the value are left byte for byte.

    A statement written twice counts as dhcpd reads it: the last one wins. If the last one
    already has the value, nothing changes; otherwise every duplicate gets the value, so no
    stale one is left behind. Either way a ``duplicate_statement`` warning names them."""
    settings.validate()
    validate(cs)  # from here on every numeric value is a single NUMBER token
    decl = cs.declaration(name)
    patches: list[Patch] = []
    missing: list[str] = []
    warnings: list[ConfigWarning] = []
    for key, value in settings.statements(decl.role):  # no mclt for a secondary
        found = [p for p in decl.params if p.key == key]
        if not found:
            missing.append(f"{key} {value};")
            continue
        in_place = int(found[-1].value) == value
        if len(found) > 1:
            warnings.append(_duplicate_warning(decl, found, value, in_place))
        if not in_place:
            patches += [
                Patch(p.value_start, p.value_end, str(value))
                for p in found
                if int(p.value) != value
            ]
    if missing:
        patches.append(_insertion(decl.doc, decl.block, missing))
    return _result(cs, {decl.doc.filename: patches}, warnings)


def _duplicate_warning(
    decl: PeerDecl, found: list[PeerParam], value: int, in_place: bool
) -> ConfigWarning:
    lines = [decl.doc.line(p.node.start) for p in found]
    last = found[-1]
    outcome = (
        "it already has the requested value, so none was changed"
        if in_place
        else f"each one is set to {value}"
    )
    return ConfigWarning(
        "duplicate_statement",
        f"failover peer {decl.name!r}: '{last.key}' is written {len(found)} times (lines "
        f"{', '.join(map(str, lines))}); dhcpd uses the last one ('{last.key} {last.value}' "
        f"on line {lines[-1]}): {outcome}",
        decl.file,
        lines[-1],
    )


def _insertion(doc: Document, block: Block, statements: list[str]) -> Patch:
    """New statements after the last one of ``block``, one per line at its indentation (on
    the same line when the block is written on one line)."""
    text = doc.text
    anchor = block.body[-1].end if block.body else block.head_end
    newline_at = text.find("\n", anchor, block.close)
    if newline_at < 0:
        return Patch(anchor, anchor, "".join(" " + s for s in statements))
    eol = "\n"
    if text[newline_at - 1] == "\r" and newline_at - 1 >= anchor:
        newline_at -= 1
        eol = "\r\n"
    if block.body:
        indent = _indent(text, block.body[-1].start)
    else:
        outer = _indent(text, block.start)
        indent = outer + ("\t" if "\t" in outer else "    ")
    return Patch(newline_at, newline_at, "".join(eol + indent + s for s in statements))


def _indent(text: str, offset: int) -> str:
    """The leading whitespace of the line holding ``offset``."""
    line_start = text.rfind("\n", 0, offset) + 1
    end = line_start
    while end < offset and text[end] in " \t":
        end += 1
    return text[line_start:end]


# -- remove ------------------------------------------------------------------------------------


def remove(cs: ConfigSet, names: Sequence[str], action: DeconfigureAction) -> dict[str, str]:
    """The new texts of :func:`remove_edit`."""
    return remove_edit(cs, names, action).texts


def remove_edit(cs: ConfigSet, names: Sequence[str], action: DeconfigureAction) -> Edit:
    """Remove the peers ``names`` and every reference to them (docs/contract.md §2).

    On a server whose block declares ``secondary``, ``action`` decides what happens to the
    pools that referenced it; on the primary they always just lose the reference.
    """
    validate(cs)
    patches: dict[str, list[Patch]] = {}

    def add(doc: Document, patch: Patch) -> None:
        patches.setdefault(doc.filename, []).append(patch)

    for name in names:
        decl = cs.declaration(name)
        add(decl.doc, _removal(decl.doc, decl.block))
        refs = cs.references_to(name)
        if decl.role == "primary" or action == DeconfigureAction.none:
            for ref in refs:
                add(ref.doc, _removal(ref.doc, ref.node))
        elif action == DeconfigureAction.disable:
            for ref in refs:
                add(ref.doc, _disable(ref))
        else:
            for doc, node in _scopes_to_delete(cs, decl, refs):
                add(doc, _removal(doc, node))
    return _result(cs, patches)


_DENY_ALL = "deny all clients;"


def _disable(ref: Reference) -> Patch:
    """The reference becomes ``deny all clients;`` in place (or just goes, if the pool
    already denies everyone)."""
    holder = ref.holder
    if holder is not None and holder[0].keyword(holder[1]) == "pool":
        doc, pool = holder
        already = any(
            isinstance(n, Statement) and doc.label(n).lower().split() == ["deny", "all", "clients"]
            for n in pool.body
        )
        if not already:
            return Patch(ref.node.start, ref.node.end, _DENY_ALL)
    return _removal(ref.doc, ref.node)


def _scopes_to_delete(
    cs: ConfigSet, decl: PeerDecl, refs: list[Reference]
) -> list[tuple[Document, Node]]:
    """The subnets whose pools reference the peer, pools declared directly in a
    shared-network, and shared-networks that would be left without a subnet."""
    doomed: list[tuple[Document, Node]] = []
    networks: list[tuple[Document, Block]] = []
    for ref in refs:
        holder = ref.holder
        if holder is None or holder[0].keyword(holder[1]) != "pool":
            doomed.append((ref.doc, ref.node))  # a reference outside a pool: only it goes
            continue
        owner = ref.scope[-2] if len(ref.scope) >= 2 else None
        kind = owner[0].keyword(owner[1]) if owner else "global scope"
        if owner is not None and kind in ("subnet", "subnet6"):
            doomed.append(owner)
            network = _enclosing_network(ref.scope[:-2])
        elif owner is not None and kind == "shared-network":
            doomed.append(holder)
            network = owner
        else:
            doc, pool = holder
            raise doc.error(
                f"failover peer {decl.name!r}: pool in {kind} is neither in a subnet nor in a "
                "shared-network; cannot delete its scope safely",
                pool.start,
            )
        if network is not None and all(network[1] is not n[1] for n in networks):
            networks.append(network)
    doomed_ids = {id(node) for _, node in doomed}
    for net_doc, net in networks:
        if all(id(subnet) in doomed_ids for subnet in _subnets(cs, net_doc, net.body)):
            doomed.append((net_doc, net))
    return doomed


def _enclosing_network(scope: tuple[tuple[Document, Block], ...]) -> tuple[Document, Block] | None:
    for doc, block in reversed(scope):
        keyword = doc.keyword(block)
        if keyword == "shared-network":
            return doc, block
        if keyword != "group":
            return None
    return None


def _subnets(cs: ConfigSet, doc: Document, items: list[Node]) -> list[Block]:
    """Subnets declared in ``items``, looking through groups and included files."""
    found: list[Block] = []
    for node in items:
        if isinstance(node, Block):
            keyword = doc.keyword(node)
            if keyword in ("subnet", "subnet6"):
                found.append(node)
            elif keyword == "group":
                found.extend(_subnets(cs, doc, node.body))
        elif (target := cs.resolve(doc, node)) is not None:
            included = cs.docs[target]
            found.extend(_subnets(cs, included, included.items))
    return found


def _removal(doc: Document, node: Node) -> Patch:
    """Delete ``node`` with its own lines (see the module docstring)."""
    text = doc.text
    n = len(text)
    start, end = node.start, node.end
    s = start
    while s > 0 and text[s - 1] in " \t":
        s -= 1
    at_line_start = s == 0 or text[s - 1] == "\n"
    e = end
    while e < n and text[e] in " \t":
        e += 1
    if at_line_start and text.startswith("#", e):  # a comment trailing it goes with it
        newline = text.find("\n", e)
        e = n if newline < 0 else newline - (text[newline - 1] == "\r")
    newline_len = 2 if text.startswith("\r\n", e) else 1 if text.startswith("\n", e) else 0
    if not newline_len and e < n:  # more follows on this line: keep the line
        return Patch(start, e) if at_line_start else Patch(s, end)
    if not at_line_start:  # the line holds more before it: keep the line
        return Patch(s, e)
    e += newline_len
    if _blank_before(text, s) and _blank_at(text, e):
        if e < n:
            e = text.index("\n", e) + 1
        elif s > 0:
            s = text.rfind("\n", 0, s - 1) + 1
    return Patch(s, e)


def _blank_before(text: str, line_start: int) -> bool:
    if line_start == 0:
        return True
    prev = text.rfind("\n", 0, line_start - 1) + 1
    return text[prev : line_start - 1].strip(" \t\r") == ""


def _blank_at(text: str, line_start: int) -> bool:
    if line_start >= len(text):
        return True
    newline = text.find("\n", line_start)
    return newline >= 0 and text[line_start:newline].strip(" \t\r") == ""


def _result(
    cs: ConfigSet, patches: dict[str, list[Patch]], warnings: Sequence[ConfigWarning] = ()
) -> Edit:
    texts: dict[str, str] = {}
    merged: dict[str, tuple[Patch, ...]] = {}
    for path, doc in cs.docs.items():
        if patches.get(path):
            merged[path] = tuple(merge(patches[path]))
            texts[path] = apply(doc.text, merged[path])
        else:
            texts[path] = doc.text
    return Edit(texts, merged, tuple(warnings))
