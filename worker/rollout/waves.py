"""The wave plan (``--waves``) and the global failure budget: pure arithmetic.

Waves follow Ansible's ``serial`` list, which is what operators moving from a playbook know:

* each entry is the size of one wave (per wave, not cumulative): ``1,1,5%,25%,100%`` is a
  canary, a second canary, then waves of 5 %, 25 % and 100 % of the pairs;
* a percentage is of all the pairs of the rollout, rounded down, and at least 1;
* when the list runs out, its last entry repeats until every pair has a wave
  (``1,10`` is one canary, then ten at a time); a wave larger than what is left takes the rest.

The budget is global: failures are counted over the whole rollout, never per wave (per-wave
budgets let failures pile up wave after wave). ``--max-failures N`` allows N failed pairs,
``--max-failure-percent P`` allows P % of the pairs (rounded down, so like Ansible's
``max_fail_percentage`` the rollout stops once *more than* P % failed); with both, the
stricter counts; with neither, none is allowed: the first failure stops the rollout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TypeVar

T = TypeVar("T")

DEFAULT_WAVES = "1,5%,100%"


@dataclass(frozen=True)
class WaveSize:
    """One entry of ``--waves``: a count of pairs, or a percentage of all of them."""

    value: int
    percent: bool = False

    def of(self, total: int) -> int:
        """How many pairs this entry means in a rollout of ``total`` pairs (Ansible's
        ``pct_to_int``: rounded down, at least 1)."""
        if not self.percent:
            return self.value
        return max(1, self.value * total // 100)

    def __str__(self) -> str:
        return f"{self.value}%" if self.percent else str(self.value)


def parse_waves(text: str) -> tuple[WaveSize, ...]:
    """``"1,1,5%,25%,100%"`` as wave sizes; ValueError naming the entry that is wrong."""
    sizes: list[WaveSize] = []
    for raw in text.split(","):
        entry = raw.strip()
        percent = entry.endswith("%")
        digits = entry.removesuffix("%").strip()
        if not digits.isdigit():
            raise ValueError(f"wave {entry!r} is neither a count (5) nor a percentage (25%)")
        value = int(digits)
        if value < 1 or (percent and value > 100):
            limit = "1%-100%" if percent else "at least 1"
            raise ValueError(f"wave {entry!r} is out of range ({limit})")
        sizes.append(WaveSize(value, percent))
    return tuple(sizes)


def format_waves(sizes: Sequence[WaveSize]) -> str:
    return ",".join(str(s) for s in sizes)


def wave_sizes(sizes: Sequence[WaveSize], total: int) -> list[int]:
    """The size of each wave for ``total`` pairs; they add up to ``total``."""
    if not sizes:
        raise ValueError("at least one wave size is needed")
    out: list[int] = []
    left, i = total, 0
    while left > 0:
        size = min(sizes[i].of(total), left)
        out.append(size)
        left -= size
        i = min(i + 1, len(sizes) - 1)
    return out


def split_waves(items: Sequence[T], sizes: Sequence[WaveSize]) -> list[list[T]]:
    """``items`` cut into waves, in order."""
    waves: list[list[T]] = []
    start = 0
    for size in wave_sizes(sizes, len(items)):
        waves.append(list(items[start : start + size]))
        start += size
    return waves


@dataclass(frozen=True)
class Budget:
    """How many failed pairs a rollout of ``total`` pairs may have and still go on."""

    max_failures: int | None = None
    max_failure_percent: Fraction | None = None

    def __post_init__(self) -> None:
        if self.max_failures is not None and self.max_failures < 0:
            raise ValueError("--max-failures must be 0 or more")
        p = self.max_failure_percent
        if p is not None and not 0 <= p <= 100:
            raise ValueError("--max-failure-percent must be between 0 and 100")

    @classmethod
    def of(cls, max_failures: int | None, max_failure_percent: str | float | None) -> Budget:
        """From the command line; the percentage is read exactly (``"2.5"`` is 5/2, not a
        binary float near it), so the rounding below never misses by one."""
        percent = None if max_failure_percent is None else Fraction(str(max_failure_percent))
        return cls(max_failures, percent)

    def allowed(self, total: int) -> int:
        """Failures allowed: past this many the rollout stops."""
        limits = []
        if self.max_failures is not None:
            limits.append(self.max_failures)
        if self.max_failure_percent is not None:
            limits.append(math.floor(total * self.max_failure_percent / 100))
        return min(limits) if limits else 0

    def exceeded(self, failures: int, total: int) -> bool:
        return failures > self.allowed(total)

    def describe(self, total: int) -> str:
        parts = []
        if self.max_failures is not None:
            parts.append(f"--max-failures {self.max_failures}")
        if self.max_failure_percent is not None:
            parts.append(f"--max-failure-percent {float(self.max_failure_percent):g}")
        why = " and ".join(parts) if parts else "no budget given"
        return f"{self.allowed(total)} failure(s) allowed of {total} pair(s) ({why})"
