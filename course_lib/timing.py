"""Timings a learner can trust: interleaved rounds, a median and its spread, honest ratios.

One timing says little. The first call of anything is slow (memory is allocated, kernels are
chosen, caches are cold), the machine does other work now and then, and a laptop changes its
clock speed as it warms up. So ``compare`` times several things the same way:

- at a **fixed thread count** (PyTorch's, for the whole measurement, restored after);
- after a **warm-up** call of each, which is not counted;
- in **interleaved rounds**: each round calls every case once, in a rotating order, so a slow
  moment of the machine falls on all of them rather than on whichever ran then;
- reported as the **median** over rounds, with the **middle half** of the rounds (the first to
  the third quartile) as the spread;
- compared as a **ratio per round** (the two cases of one round ran side by side). When the
  middle half of those ratios spans 1, or the middle halves of the two cases' times overlap,
  the table says "no measurable difference" instead of a ratio that the next run could
  reverse.

    >>> from course_lib.timing import compare
    >>> t = compare({"sum": lambda: sum(range(20_000)), "list": lambda: list(range(20_000))},
    ...             rounds=5)
    >>> sorted(t.seconds), len(t.seconds["sum"])
    (['list', 'sum'], 5)
    >>> r = t.speedup("list", base="sum")       # how many times as fast as "sum", per round
    >>> r.low <= r.value <= r.high
    True

Lesson 08 and every benchmark time with it; ``Timings.table`` prints rates such as tokens/s.
Compare timings only from one machine in one session: another machine, or the same one busy
with other work, gives other numbers.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from course_lib.errors import CourseError


@dataclass(frozen=True)
class Ratio:
    """How many times as fast one case is as another: the median over rounds of
    ``time(base) / time(case)`` (above 1: faster) and the middle half of the rounds' ratios.
    ``doubt`` says why the difference is not measurable, or is "" when it is: the rounds'
    ratios (their middle half) span 1, the two cases' times (their middle halves) overlap, or
    there were too few rounds (under 3) to tell."""

    value: float
    low: float
    high: float
    doubt: str = ""

    @property
    def measurable(self) -> bool:
        return not self.doubt

    def __str__(self) -> str:
        spread = f"{self.low:.2f}-{self.high:.2f}"
        if self.doubt == SPANS_ONE:
            return f"no measurable difference ({spread})"
        if self.doubt == TOO_FEW:
            return f"{self.value:.2f} ({TOO_FEW})"
        if self.doubt:
            return f"no measurable difference ({spread}, but {self.doubt})"
        return f"{self.value:.2f} ({spread})"


SPANS_ONE = "the ratios span 1"
OVERLAP = "the times overlap"
TOO_FEW = "too few rounds to tell"


@dataclass
class Timings:
    """Seconds per call of each case, one a round (``seconds[name][i]``: round i), measured by
    ``compare`` with ``threads`` PyTorch threads."""

    seconds: dict[str, list[float]]
    threads: int
    warmup: int = 1

    def median(self, name: str) -> float:
        """The median seconds per call of ``name``."""
        return statistics.median(self._times(name))

    def spread(self, name: str) -> tuple[float, float]:
        """The middle half of ``name``'s seconds per call: (first quartile, third quartile)."""
        return _middle_half(self._times(name))

    def rate(self, name: str, work: float = 1.0) -> float:
        """``work`` done per call (tokens, FLOPs, ...) over the median seconds: e.g. tokens/s."""
        return work / self.median(name)

    def speedup(self, name: str, base: str | None = None) -> Ratio:
        """How many times as fast ``name`` is as ``base`` (default: the first case), from the
        rounds' own ratios (the two ran side by side in each round)."""
        base = next(iter(self.seconds)) if base is None else base
        ratios = [b / t for b, t in zip(self._times(base), self._times(name), strict=True)]
        low, high = _middle_half(ratios)
        (b1, b3), (t1, t3) = self.spread(base), self.spread(name)
        doubt = ""
        if len(ratios) < 3:
            doubt = TOO_FEW
        elif low <= 1.0 <= high:
            doubt = SPANS_ONE
        elif not (b3 < t1 or t3 < b1):  # the middle halves of the two cases' times overlap
            doubt = OVERLAP
        return Ratio(statistics.median(ratios), low, high, doubt)

    def table(self, work: float = 1.0, unit: str = "calls/s", label: str = "case") -> str:
        """One line a case: its rate (``work`` per call over the seconds: median, and the middle
        half of the rounds) and its speed as a ratio to the first case."""
        base = next(iter(self.seconds))
        rows = [(label, unit, f"speed x {base}")]
        for name in self.seconds:
            q1, q3 = self.spread(name)
            rate = f"{_fmt(work / self.median(name))} ({_fmt(work / q3)}-{_fmt(work / q1)})"
            rows.append((name, rate, "1.00" if name == base else str(self.speedup(name))))
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        lines = [f"{a.ljust(widths[0])} | {b.rjust(widths[1])} | {c}".rstrip() for a, b, c in rows]
        rounds = len(self.seconds[base])
        warmup = f"{self.warmup} warm-up call{'s' * (self.warmup != 1)}" if self.warmup else "none"
        note = (
            f"{self.threads} thread{'s' * (self.threads != 1)}; the median of {rounds} "
            f"interleaved round{'s' * (rounds != 1)} (warm-up: {warmup}), in brackets the middle "
            f"half of the rounds"
        )
        return "\n".join([*lines, note])

    def _times(self, name: str) -> list[float]:
        if name not in self.seconds:
            raise KeyError(f"no case {name!r} was timed: the cases are {list(self.seconds)}")
        return self.seconds[name]


def compare(
    cases: dict[str, Callable[[], object]],
    rounds: int = 7,
    warmup: int = 1,
    threads: int | None = None,
) -> Timings:
    """Time each case (a function of no arguments; a lambda or ``functools.partial``): ``warmup``
    uncounted calls each, then ``rounds`` rounds that call every case once, in an order that
    rotates from round to round. ``threads``: PyTorch's thread count during the measurement
    (default: the current one); it is restored after. On a GPU each call is synchronised."""
    if not cases:
        raise CourseError("nothing to time: pass {name: function}, e.g. {'fp32': lambda: f(x)}")
    for name, fn in cases.items():
        if not callable(fn):
            raise TypeError(
                f"case {name!r} is {type(fn).__name__}, not a function: pass lambda: ... so "
                f"that compare can call it once a round"
            )
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise CourseError(
            f"rounds must be an integer >= 1 (5 or more for a spread), got {rounds!r}"
        )
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise CourseError(f"warmup must be an integer >= 0, got {warmup!r}")
    before = torch.get_num_threads()
    threads = before if threads is None else threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise CourseError(f"threads must be an integer >= 1, got {threads!r}")
    names = list(cases)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    torch.set_num_threads(threads)
    try:
        for _ in range(warmup):
            for name in names:
                cases[name]()
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                seconds[name].append(_seconds(cases[name]))
    finally:
        torch.set_num_threads(before)
    return Timings(seconds, threads, warmup)


def _seconds(fn: Callable[[], object]) -> float:
    gpu = torch.cuda.is_available() and torch.cuda.is_initialized()
    if gpu:
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if gpu:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _middle_half(values: list[float]) -> tuple[float, float]:
    """The first and third quartiles; the lowest and highest of fewer than 3 values."""
    if len(values) < 3:
        return min(values), max(values)
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def _fmt(x: float) -> str:
    """A rate in 3 or more significant figures: 39,690 / 1,643 / 575 / 18.0 / 2.00 / 0.152."""
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.1f}" if x >= 10 else f"{x:#.3g}"
