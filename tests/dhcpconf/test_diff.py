"""The diff from edit positions: a correct unified diff, minimal at every region's edge."""

from __future__ import annotations

import difflib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.dhcpconf.corpus import CorpusCase
from tests.dhcpconf.pairs import MAIN, PRIMARY, SECONDARY, one
from tests.dhcpconf.unidiff import apply_diff, change_runs
from worker.change.plan import ServerPlan, plan_remove
from worker.demo import sample_config
from worker.dhcpconf import ConfigSet, Edit, PeerSettings, modify_edit, remove_edit, unified_diff
from worker.dhcpconf.edits import Patch, apply
from worker.messages import DeconfigureAction, RemoveParams

#: A newline ends a line; \r, \f and \t are ordinary characters inside one (dhcpd reads them
#: as whitespace), so they must not split lines in a diff either.
PIECES = ["a", "b", "x;", " ", "}", "\n", "\n", "\r\n", "\r", "\t", "\f"]
text_st = st.lists(st.sampled_from(PIECES), max_size=40).map("".join)


@st.composite
def edited(draw: st.DrawFn) -> tuple[str, list[Patch]]:
    """A text and non-overlapping patches (insertions, deletions, replacements) on it, as
    :func:`apply` takes them (never an insertion where a wider patch starts)."""
    before = draw(text_st)
    points = sorted(draw(st.lists(st.integers(0, len(before)), max_size=10)))
    patches: list[Patch] = []
    for start, end in zip(points[::2], points[1::2], strict=False):
        while patches and patches[-1].start == patches[-1].end == start < end:
            patches.pop()
        text = draw(st.lists(st.sampled_from(PIECES), max_size=6).map("".join))
        patches.append(Patch(start, end, text))
    return before, patches


def assert_sound(before: str, after: str, diff: str) -> None:
    """The diff turns before into after, and no change run starts or ends with a removed
    and an added line that are the same line."""
    assert apply_diff(diff, {MAIN: before})[MAIN] == after
    for removed, added in change_runs(diff):
        if removed and added:
            assert removed[0] != added[0] and removed[-1] != added[-1], (removed, added)


@settings(max_examples=400, deadline=None)
@given(edited())
def test_the_diff_of_any_patches_applies_and_is_trimmed_at_every_edge(
    case: tuple[str, list[Patch]],
) -> None:
    before, patches = case
    after = apply(before, patches)
    diff = unified_diff(MAIN, before, after, patches)
    assert (diff.text == "") == (before == after)
    assert_sound(before, after, diff.text)
    runs = change_runs(diff.text)
    assert (diff.removed, diff.added) == (
        sum(len(r) for r, _ in runs),
        sum(len(a) for _, a in runs),
    )


@settings(max_examples=100, deadline=None)
@given(edited(), text_st)
def test_patches_that_do_not_match_the_texts_still_give_a_correct_diff(
    case: tuple[str, list[Patch]], other: str
) -> None:
    before, patches = case
    assert_sound(before, other, unified_diff(MAIN, before, other, patches).text)


def test_an_insertion_after_a_line_is_a_pure_addition() -> None:
    before = "a;\nb;\nc;\n"
    diff = unified_diff(MAIN, before, "a;\nb;\nX;\nc;\n", [Patch(4, 4, "\nX;")]).text
    assert diff == (
        "--- a/etc/dhcp/dhcpd.conf\n+++ b/etc/dhcp/dhcpd.conf\n"
        "@@ -1,3 +1,4 @@\n a;\n b;\n+X;\n c;\n"
    )


def test_changes_further_apart_than_six_lines_get_their_own_hunks() -> None:
    before = "".join(f"l{i};\n" for i in range(20))

    def line(n: int) -> Patch:
        at = before.index(f"l{n};")
        return Patch(at, at + len(f"l{n}"), f"L{n}")

    def hunks(*patches: Patch) -> int:
        return unified_diff(MAIN, before, apply(before, patches), patches).text.count("@@ -")

    assert hunks(line(2), line(9)) == 1  # six unchanged lines (l3-l8) between
    assert hunks(line(2), line(10)) == 2


def test_a_form_feed_or_a_lone_cr_inside_a_line_does_not_end_it() -> None:
    """Only a newline ends a line for patch; splitlines() also splits at \\f and \\r, and
    the old difflib-based diff then claimed a missing newline in mid-file."""
    before = "a;\fb;\nc;\rd;\ne;\n"
    after = before.replace("e;", "E;")
    diff = ServerPlan("s", "primary", MAIN, {MAIN: before}, {MAIN: after}).diff()
    assert "No newline" not in diff
    assert " a;\fb;\n c;\rd;\n-e;\n+E;\n" in diff


def test_no_diff_of_a_large_remove_runs_difflib(monkeypatch: pytest.MonkeyPatch) -> None:
    """difflib is quadratic on a Delete's diff (seconds at 2,000 subnets): never used."""
    pools = "".join(
        f"subnet 10.1.{i}.0 netmask 255.255.255.0 {{\n  pool {{\n"
        f'    failover peer "fo";\n    range 10.1.{i}.10 10.1.{i}.99;\n  }}\n}}\n'
        for i in range(50)
    )
    configs = {"p": one(PRIMARY + pools), "s": one(SECONDARY + pools)}
    params = RemoveParams.model_validate(
        {"Server": "p", "Name": "fo", "DeconfigureAction": "Delete"}
    )
    plans = plan_remove(params, configs, {"fo": ("p", "s")})

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("difflib used")

    monkeypatch.setattr(difflib, "SequenceMatcher", refuse)
    for plan in plans:
        assert_sound(plan.before[MAIN], plan.after[MAIN], plan.diff())
    assert plans[1].diff().count("-subnet ") == 51


# -- on real edits: as difflib's, or as small and still correct -----------------------------


def difflib_diff(before: str, after: str) -> str:
    """The diff the plan produced before it was computed from the patches."""
    name = MAIN.lstrip("/")
    lines = difflib.unified_diff(
        before.splitlines(keepends=True),
        after.splitlines(keepends=True),
        fromfile=f"a/{name}",
        tofile=f"b/{name}",
    )
    return "".join(
        line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines
    )


def edits_of(cs: ConfigSet, peer: str) -> list[Edit]:
    change = PeerSettings(mclt=4321, primary_port=700, max_response_delay=5)
    return [modify_edit(cs, peer, change)] + [
        remove_edit(cs, [peer], action) for action in DeconfigureAction
    ]


def assert_like_difflib(cs: ConfigSet, edit: Edit) -> bool:
    """Each changed file's diff is sound and as small as difflib's; True if equal to it."""
    same = True
    for path, before in cs.texts().items():
        after = edit.texts[path]
        if after == before:
            continue
        ours = unified_diff(MAIN, before, after, edit.patches[path])
        assert_sound(before, after, ours.text)
        theirs = difflib_diff(before, after)
        if ours.text != theirs:
            same = False
            runs = change_runs(theirs)
            assert (ours.removed, ours.added) == (
                sum(len(r) for r, _ in runs),
                sum(len(a) for _, a in runs),
            )
    return same


SMALL = {
    "pair primary": (PRIMARY, "fo"),
    "pair secondary": (SECONDARY, "fo"),
    "sample primary": (sample_config("primary"), "dhcp-failover"),
    "sample secondary": (sample_config("secondary"), "dhcp-failover"),
}


@pytest.mark.parametrize(("text", "peer"), SMALL.values(), ids=SMALL.keys())
def test_on_the_sample_configs_every_edit_diffs_exactly_as_difflib(text: str, peer: str) -> None:
    cs = one(text)
    assert all(assert_like_difflib(cs, edit) for edit in edits_of(cs, peer))


def test_on_the_fixtures_every_edit_diffs_as_difflib_or_as_small_and_correct(
    case: CorpusCase,
) -> None:
    """Where they differ, the change is ambiguous (a block removed with one of the two
    blank lines around it: difflib shows the one above, we the one below)."""
    cs = case.config_set()
    for edit in edits_of(cs, case.peer):
        assert_like_difflib(cs, edit)
