"""course_lib.timing: interleaved rounds, a fixed thread count, medians, spreads and ratios that
say "no measurable difference" when the rounds disagree. A fake clock makes every number exact."""

import itertools

import pytest
import torch

from course_lib import timing
from course_lib.timing import Ratio, Timings, compare


@pytest.fixture
def clock(monkeypatch):
    """A clock that moves only when a case says so: ``tick(s)`` advances it by s seconds."""
    now = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])

    def tick(seconds):
        now[0] += seconds

    return tick


def test_rounds_are_interleaved_in_a_rotating_order_after_the_warm_up():
    calls = []
    cases = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    t = compare(cases, rounds=4, warmup=2)
    assert calls[:6] == list("abcabc")  # warm-up, not counted
    assert calls[6:] == list("abcbcacababc")  # each round starts one later
    assert {name: len(s) for name, s in t.seconds.items()} == {"a": 4, "b": 4, "c": 4}


def test_the_thread_count_is_fixed_while_timing_and_restored_after():
    before = torch.get_num_threads()
    seen = []
    t = compare({"f": lambda: seen.append(torch.get_num_threads())}, rounds=3, threads=1)
    assert seen == [1] * 4 and t.threads == 1
    assert torch.get_num_threads() == before
    assert compare({"f": lambda: None}, rounds=3).threads == before  # default: as it is


def test_the_thread_count_is_restored_when_a_case_fails():
    before = torch.get_num_threads()

    def fails():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        compare({"f": fails}, threads=1)
    assert torch.get_num_threads() == before


def test_median_spread_and_rate(clock):
    times = iter([5.0, 1.0, 2.0, 3.0, 4.0])  # a slow first round, then steady
    t = compare({"f": lambda: clock(next(times))}, rounds=4, warmup=1)
    assert t.seconds == {"f": [1.0, 2.0, 3.0, 4.0]}
    assert t.median("f") == 2.5
    assert t.spread("f") == (1.75, 3.25)  # the middle half: first to third quartile
    assert t.rate("f", work=10) == 4.0  # e.g. 10 tokens a call: 4 tokens/s


def test_a_clear_speed_up_is_measured(clock):
    t = compare({"slow": lambda: clock(2.0), "fast": lambda: clock(0.5)}, rounds=5)
    r = t.speedup("fast")  # against the first case
    assert r == Ratio(4.0, 4.0, 4.0) and r.measurable
    assert str(r) == "4.00 (4.00-4.00)"
    assert t.speedup("slow", base="fast") == Ratio(0.25, 0.25, 0.25)


def test_a_ratio_inside_the_spread_is_no_measurable_difference(clock):
    # The two take turns being faster: a median ratio near 1 that the next run could reverse.
    a = itertools.cycle([1.0, 1.2, 1.0, 0.9, 1.1])
    b = itertools.cycle([1.1, 1.0, 0.9, 1.0, 1.05])
    t = compare({"a": lambda: clock(next(a)), "b": lambda: clock(next(b))}, rounds=5, warmup=0)
    r = t.speedup("b")
    assert not r.measurable and r.low < 1 < r.high
    assert str(r) == f"no measurable difference ({r.low:.2f}-{r.high:.2f})"
    assert "no measurable difference" in t.table()


def test_a_steady_ratio_between_overlapping_times_is_no_measurable_difference(clock):
    # b is 1% slower in every round, but each varies by 10% from round to round: the ratio
    # stays above 1 while the times overlap, as for two copies of one model.
    a = iter([1.0, 1.1, 0.9, 1.05, 0.95])
    b = iter([1.01, 1.111, 0.909, 1.0605, 0.9595])
    t = compare({"a": lambda: clock(next(a)), "b": lambda: clock(next(b))}, rounds=5, warmup=0)
    r = t.speedup("b")
    assert r.high < 1 and not r.measurable and r.doubt == "the times overlap"
    assert str(r) == f"no measurable difference ({r.low:.2f}-{r.high:.2f}, but the times overlap)"


def test_the_table_prints_rates_spreads_and_ratios(clock):
    t = compare({"fp32": lambda: clock(0.1), "int8": lambda: clock(0.05)}, rounds=3)
    lines = t.table(work=64, unit="tokens/s", label="model").splitlines()
    cells = [[cell.strip() for cell in line.split(" | ")] for line in lines[:3]]
    assert cells == [
        ["model", "tokens/s", "speed x fp32"],
        ["fp32", "640 (640-640)", "1.00"],
        ["int8", "1,280 (1,280-1,280)", "2.00 (2.00-2.00)"],
    ]
    bars = {tuple(i for i, ch in enumerate(line) if ch == "|") for line in lines[:3]}
    assert len(bars) == 1  # the columns line up
    assert lines[3].startswith(f"{t.threads} thread") and "median of 3 interleaved" in lines[3]
    assert "(warm-up: 1 warm-up call)" in lines[3]
    assert "(warm-up: none)" in compare({"f": lambda: clock(1.0)}, rounds=3, warmup=0).table()


def test_fewer_than_three_rounds_spread_from_lowest_to_highest_and_give_no_verdict(clock):
    times = iter([1.0, 1.0, 3.0])
    t = compare({"f": lambda: clock(next(times))}, rounds=2)
    assert t.spread("f") == (1.0, 3.0)
    t = compare({"a": lambda: clock(2.0), "b": lambda: clock(1.0)}, rounds=1)
    r = t.speedup("b")
    assert not r.measurable and str(r) == "2.00 (too few rounds to tell)"


def test_small_rates_keep_three_figures(clock):
    t = compare({"f": lambda: clock(0.5)}, rounds=3)
    assert t.table().splitlines()[1].split(" | ")[1].strip() == "2.00 (2.00-2.00)"


def test_errors_name_the_problem_and_the_fix():
    with pytest.raises(ValueError, match="nothing to time"):
        compare({})
    with pytest.raises(TypeError, match="not a function: pass lambda"):
        compare({"f": 3})
    with pytest.raises(ValueError, match="rounds must be an integer >= 1"):
        compare({"f": lambda: None}, rounds=0)
    with pytest.raises(ValueError, match="warmup must be an integer >= 0"):
        compare({"f": lambda: None}, warmup=-1)
    with pytest.raises(ValueError, match="threads must be an integer >= 1"):
        compare({"f": lambda: None}, threads=0)
    with pytest.raises(KeyError, match="no case 'g' was timed: the cases are \\['f'\\]"):
        Timings({"f": [1.0, 1.0, 1.0]}, 1).median("g")
