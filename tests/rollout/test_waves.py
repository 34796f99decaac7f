"""The wave plan and the failure budget: Ansible's ``serial`` and ``max_fail_percentage``
arithmetic, made exact."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.rollout.waves import Budget, WaveSize, parse_waves, split_waves, wave_sizes

sizes = st.lists(
    st.one_of(
        st.integers(1, 50).map(WaveSize),
        st.integers(1, 100).map(lambda p: WaveSize(p, percent=True)),
    ),
    min_size=1,
    max_size=6,
)


def ansible_batches(serial: list[int | str], hosts: int) -> list[int]:
    """Ansible's ``_get_serialized_batches`` (lib/ansible/executor/playbook_executor.py),
    with its percentage rounding done in integers (Ansible's float can land one low)."""
    left, item, batches = hosts, 0, []
    while left > 0:
        value = serial[item]
        count = int(value.rstrip("%")) * hosts // 100 or 1 if isinstance(value, str) else value
        take = min(count, left)
        batches.append(take)
        left -= take
        item = min(item + 1, len(serial) - 1)
    return batches


def test_the_issue_example_is_a_canary_a_second_canary_then_growing_waves() -> None:
    spec = parse_waves("1,1,5%,25%,100%")
    assert wave_sizes(spec, 200) == [1, 1, 10, 50, 138]
    assert wave_sizes(spec, 12) == [1, 1, 1, 3, 6]  # 5 % of 12 rounds down to 0: at least 1
    assert wave_sizes(parse_waves("1,10"), 25) == [1, 10, 10, 4]  # the last entry repeats


@pytest.mark.parametrize("text", ["", "0", "1,,2", "101%", "0%", "-1", "5 %x", "1.5", "x"])
def test_unusable_waves_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="wave"):
        parse_waves(text)


@given(sizes, st.integers(0, 500))
def test_waves_cover_every_pair_once_in_order(spec: list[WaveSize], total: int) -> None:
    items = list(range(total))
    waves = split_waves(items, spec)
    assert [i for wave in waves for i in wave] == items
    assert all(waves) and len(waves) == len(wave_sizes(spec, total))


@given(sizes, st.integers(1, 500))
def test_waves_are_ansible_serial_batches(spec: list[WaveSize], total: int) -> None:
    serial: list[int | str] = [f"{s.value}%" if s.percent else s.value for s in spec]
    assert wave_sizes(spec, total) == ansible_batches(serial, total)
    assert parse_waves(",".join(map(str, serial))) == tuple(spec)


@given(st.integers(0, 1000), st.integers(0, 1000))
def test_max_failures_allows_exactly_n(n: int, failures: int) -> None:
    assert Budget(n).exceeded(failures, 1000) == (failures > n)


@given(
    st.integers(1, 1000),
    st.decimals(0, 100, places=2, allow_nan=False, allow_infinity=False),
    st.integers(0, 1000),
)
def test_max_failure_percent_stops_once_more_than_p_percent_failed(
    total: int, percent: object, failures: int
) -> None:
    budget = Budget.of(None, str(percent))
    exact = Fraction(str(percent))
    assert budget.exceeded(failures, total) == (Fraction(failures * 100, total) > exact)


@given(st.integers(0, 50), st.integers(0, 100), st.integers(1, 400), st.integers(0, 400))
def test_with_both_the_stricter_counts(n: int, p: int, total: int, failures: int) -> None:
    both = Budget.of(n, p)
    assert both.exceeded(failures, total) == (
        Budget(n).exceeded(failures, total) or Budget.of(None, p).exceeded(failures, total)
    )


def test_without_a_budget_the_first_failure_stops() -> None:
    assert not Budget().exceeded(0, 100)
    assert Budget().exceeded(1, 100)
    assert Budget.of(None, "2.5").allowed(200) == 5  # read exactly, not as a binary float
    assert Budget.of(None, 29).allowed(100) == 29  # Ansible's float says 28 here


@pytest.mark.parametrize("bad", [(-1, None), (None, "100.5"), (None, "-1")])
def test_a_budget_out_of_range_is_refused(bad: tuple[int | None, str | None]) -> None:
    with pytest.raises(ValueError):
        Budget.of(*bad)
