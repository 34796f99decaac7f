"""A small, strict unified-diff reader for the tests: apply a diff, list its change runs.

It checks what ``patch`` would: every context and removed line matches the old file, and
each hunk's header counts match its body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_HUNK = re.compile(r"@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@\n")
NO_NEWLINE = "\\ No newline at end of file\n"


def split_lines(text: str) -> list[str]:
    """After each ``\\n`` only, endings kept (what a unified diff counts as lines)."""
    return re.findall(r"[^\n]*\n|[^\n]+$", text)


@dataclass
class Hunk:
    old_start: int
    old_len: int
    new_start: int
    new_len: int
    body: list[tuple[str, str]] = field(default_factory=list)  # (" "/"-"/"+", line)


def parse(diff: str) -> dict[str, list[Hunk]]:
    """Path (without ``a/``) -> hunks; asserts the diff is well formed."""
    lines = split_lines(diff)
    files: dict[str, list[Hunk]] = {}
    i = 0
    hunks: list[Hunk] = []
    while i < len(lines):
        line = lines[i]
        if line.startswith("--- a/"):
            assert lines[i + 1] == "+++ b/" + line[6:], lines[i : i + 2]
            hunks = files.setdefault(line[6:-1], [])
            i += 2
            continue
        m = _HUNK.fullmatch(line)
        if m:
            a, b, c, d = m.groups()
            hunks.append(
                Hunk(int(a), 1 if b is None else int(b), int(c), 1 if d is None else int(d))
            )
        elif line == NO_NEWLINE:
            tag, previous = hunks[-1].body[-1]
            assert previous.endswith("\n")
            hunks[-1].body[-1] = (tag, previous[:-1])
        else:
            assert line[0] in " -+" and line.endswith("\n"), line
            hunks[-1].body.append((line[0], line[1:]))
        i += 1
    for path_hunks in files.values():
        for h in path_hunks:
            assert sum(t != "+" for t, _ in h.body) == h.old_len, h
            assert sum(t != "-" for t, _ in h.body) == h.new_len, h
    return files


def apply_diff(diff: str, before: dict[str, str]) -> dict[str, str]:
    """``before`` with the diff applied, as ``patch`` would (strictly: no fuzz, no offset)."""
    after = dict(before)
    for path, hunks in parse(diff).items():
        key = next(p for p in before if p.lstrip("/") == path)
        old = split_lines(before[key])
        out: list[str] = []
        pos = 0
        for h in hunks:
            start = h.old_start - 1 if h.old_len else h.old_start
            assert start >= pos, "hunks overlap or are out of order"
            out += old[pos:start]
            pos = start
            for tag, line in h.body:
                if tag != "+":
                    assert old[pos] == line, (pos, old[pos], line)
                    pos += 1
                if tag != "-":
                    out.append(line)
            assert len(out) - h.new_len == (h.new_start - 1 if h.new_len else h.new_start)
        out += old[pos:]
        after[key] = "".join(out)
    return after


def change_runs(diff: str) -> list[tuple[list[str], list[str]]]:
    """Each run of ``-``/``+`` lines as (removed, added)."""
    runs: list[tuple[list[str], list[str]]] = []
    for hunks in parse(diff).values():
        for h in hunks:
            current: tuple[list[str], list[str]] | None = None
            for tag, line in h.body:
                if tag == " ":
                    current = None
                    continue
                if current is None:
                    current = ([], [])
                    runs.append(current)
                (current[0] if tag == "-" else current[1]).append(line)
    return runs
