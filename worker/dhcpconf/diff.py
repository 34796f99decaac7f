"""Unified diffs computed from an edit's patches, in time linear in the size of the change.

A text diff (difflib) of two large files is quadratic: a remove with ``Delete`` on a
2,000-subnet file took seconds. An edit knows where it changed the text, though (its
:class:`~worker.dhcpconf.edits.Patch` list), so the diff is built from those positions:

1. each patch grows to the whole lines it touches, and patches whose lines overlap or touch
   merge into one region;
2. lines a region's old and new text have in common at its start or end are trimmed, so an
   insertion after a line is a pure ``+`` and no region starts or ends with a ``-``/``+``
   pair of identical lines;
3. regions closer than twice the context (3 lines) share a hunk, as in ``diff -u``.

Lines end at ``\\n`` only (a ``\\r`` or form feed inside a line is part of it, as for
``patch``); a last line without a newline is followed by ``\\ No newline at end of file``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from worker.dhcpconf.edits import Patch, apply, merge
from worker.dhcpconf.redact import NO_SECRETS, Secrets, secrets

CONTEXT = 3
NO_NEWLINE = "\\ No newline at end of file\n"


@dataclass(frozen=True)
class UnifiedDiff:
    """A diff's text and how many lines it removes and adds."""

    text: str
    added: int = 0
    removed: int = 0


@dataclass(frozen=True)
class _Change:
    """One trimmed region: old lines from ``old_at`` (offset) / ``old_line`` (0-based index),
    new lines from ``new_at`` in the new text."""

    old_at: int
    old_line: int
    old: list[str]
    new_at: int
    new: list[str]

    @property
    def old_end_line(self) -> int:
        return self.old_line + len(self.old)

    @property
    def old_end(self) -> int:
        return self.old_at + sum(map(len, self.old))


def unified_diff(
    path: str,
    before: str,
    after: str,
    patches: Sequence[Patch] = (),
    *,
    redact: bool = False,
) -> UnifiedDiff:
    """The diff of ``before`` -> ``after`` with ``a/<path>`` / ``b/<path>`` headers.

    ``patches`` must turn ``before`` into ``after``; if they do not (or none are given) the
    whole file is one region, which is still a correct diff. ``redact`` hides key material
    (:mod:`worker.dhcpconf.redact`) in every line shown.
    """
    if before == after:
        return UnifiedDiff("")
    merged = merge(patches)
    if not merged or apply(before, merged) != after:
        merged = [Patch(0, len(before), after)]
    changes = list(_changes(before, merged))
    if not changes:
        return UnifiedDiff("")
    shown_old = secrets(before, path) if redact else NO_SECRETS
    shown_new = secrets(after, path) if redact else NO_SECRETS
    name = path.lstrip("/")
    out = [f"--- a/{name}\n+++ b/{name}\n"]
    total = before.count("\n") + (1 if before and not before.endswith("\n") else 0)
    delta = 0  # new line index minus old line index, before the hunk
    for hunk in _hunks(changes):
        delta = _hunk(out, before, total, hunk, delta, shown_old, shown_new)
    return UnifiedDiff(
        "".join(out),
        added=sum(len(c.new) for c in changes),
        removed=sum(len(c.old) for c in changes),
    )


def _changes(before: str, patches: list[Patch]) -> Iterator[_Change]:
    """Steps 1 and 2 of the module docstring, in file order."""
    line, counted = 0, 0  # the line index at offset ``counted`` (a line start)
    shift = 0  # offset in the new text minus offset in the old, before the region
    i = 0
    while i < len(patches):
        start = end = pos = before.rfind("\n", 0, patches[i].start) + 1
        pieces: list[str] = []
        ends_line = True  # the new text so far is empty or ends with a newline
        while i < len(patches) and before.rfind("\n", 0, patches[i].start) + 1 <= end:
            p = patches[i]
            for piece in (before[pos : p.start], p.text):
                if piece:
                    pieces.append(piece)
                    ends_line = piece.endswith("\n")
            pos = p.end
            end = max(end, _region_end(before, p.end, ends_line))
            i += 1
        pieces.append(before[pos:end])
        old_text, new_text = before[start:end], "".join(pieces)
        line += before.count("\n", counted, start)
        counted = start
        change = _trimmed(start, line, old_text, start + shift, new_text)
        shift += len(new_text) - len(old_text)
        if change is not None:
            yield change


def _region_end(before: str, end: int, ends_line: bool) -> int:
    """Where a region whose last patch ends at ``end`` ends: there, if that is a line start
    and the new text so far is whole lines; else at the end of the line holding ``end``."""
    if end >= len(before) or ((end == 0 or before[end - 1] == "\n") and ends_line):
        return end
    newline = before.find("\n", end)
    return len(before) if newline < 0 else newline + 1


def _trimmed(old_at: int, line: int, old_text: str, new_at: int, new_text: str) -> _Change | None:
    old, new = lines(old_text), lines(new_text)
    head = 0
    while head < len(old) and head < len(new) and old[head] == new[head]:
        head += 1
    tail = 0
    while tail < len(old) - head and tail < len(new) - head and old[-1 - tail] == new[-1 - tail]:
        tail += 1
    if head == len(old) == len(new):
        return None
    skipped = sum(map(len, old[:head]))
    return _Change(
        old_at + skipped,
        line + head,
        old[head : len(old) - tail],
        new_at + skipped,
        new[head : len(new) - tail],
    )


def lines(text: str) -> list[str]:
    """``text`` split after each ``\\n`` (only there), line endings kept."""
    parts = text.split("\n")
    last = parts.pop()
    out = [p + "\n" for p in parts]
    if last:
        out.append(last)
    return out


def _hunks(changes: list[_Change]) -> Iterator[list[_Change]]:
    hunk = [changes[0]]
    for change in changes[1:]:
        if change.old_line - hunk[-1].old_end_line > 2 * CONTEXT:
            yield hunk
            hunk = []
        hunk.append(change)
    yield hunk


def _hunk(
    out: list[str],
    before: str,
    total: int,
    hunk: list[_Change],
    delta: int,
    shown_old: Secrets,
    shown_new: Secrets,
) -> int:
    """Append one hunk; return the line delta after it."""
    first, last = hunk[0], hunk[-1]
    lead_at, lead = _lines_before(before, first.old_at, min(CONTEXT, first.old_line))
    trail = _lines_after(before, last.old_end, min(CONTEXT, total - last.old_end_line))
    old_start = first.old_line - len(lead)
    old_len = last.old_end_line + len(trail) - old_start
    grown = sum(len(c.new) - len(c.old) for c in hunk)
    out.append(
        f"@@ -{_range(old_start, old_len)} +{_range(old_start + delta, old_len + grown)} @@\n"
    )
    at = _emit(out, " ", lead_at, lead, shown_old)
    for n, change in enumerate(hunk):
        if n:
            gap = lines(before[at : change.old_at])
            _emit(out, " ", at, gap, shown_old)
        _emit(out, "-", change.old_at, change.old, shown_old)
        _emit(out, "+", change.new_at, change.new, shown_new)
        at = change.old_end
    _emit(out, " ", at, trail, shown_old)
    return delta + grown


def _emit(out: list[str], prefix: str, at: int, block: list[str], shown: Secrets) -> int:
    """Append ``block`` (lines starting at offset ``at``); return the offset after it."""
    for line in block:
        text = shown.redact_line(at, line) if shown.spans else line
        out.append(prefix + text if text.endswith("\n") else prefix + text + "\n" + NO_NEWLINE)
        at += len(line)
    return at


def _lines_before(text: str, at: int, count: int) -> tuple[int, list[str]]:
    """The ``count`` lines before the line start ``at``, and the offset of the first."""
    start = at
    for _ in range(count):
        start = text.rfind("\n", 0, start - 1) + 1
    return start, lines(text[start:at])


def _lines_after(text: str, at: int, count: int) -> list[str]:
    """The ``count`` lines from the line start ``at``."""
    end = at
    for _ in range(count):
        newline = text.find("\n", end)
        end = len(text) if newline < 0 else newline + 1
    return lines(text[at:end])


def _range(start: int, length: int) -> str:
    """A hunk range as ``diff -u`` (and difflib) write it."""
    if length == 1:
        return str(start + 1)
    return f"{start + (1 if length else 0)},{length}"
