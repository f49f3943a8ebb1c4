"""Checkers for the exercises of Lesson 01 (notebooks/01_tokenizer.ipynb)."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

from course_lib.exercises import call, checker
from course_lib.tokenizer import merge

_IDS = [
    list(b"aaabdaaabac"),  # the classic BPE example: "aa" occurs (overlapping) 4 times
    [1, 2, 1, 2, 1, 2],
    [5],
    [],
]


@checker("pair_counts", "Loop over neighbours with zip(ids, ids[1:]) and count each pair.")
def check_pair_counts(fn) -> str | None:
    """Check ``fn(ids) -> dict[tuple[int, int], int]``: how often each adjacent pair occurs."""
    for ids in _IDS:
        got = call(fn, list(ids))
        want = Counter(pairwise(ids))
        if not isinstance(got, dict):
            return f"return a dict mapping (a, b) pairs to counts, got {type(got).__name__}"
        if got == Counter(ids) != want:
            return "you counted single ids: count *pairs* of neighbours (ids[i], ids[i+1])"
        if any(not isinstance(k, tuple) for k in got):
            bad = next(k for k in got if not isinstance(k, tuple))
            return f"keys must be tuples (a, b) of two neighbouring ids, got {bad!r}"
        if got == Counter(zip(ids[::2], ids[1::2])) != want:
            return (
                f"on {ids} you stepped two at a time: pairs overlap, (a, b) and (b, c) both "
                "count, so step one position at a time"
            )
        if got != want:
            missing = {p: n for p, n in want.items() if got.get(p) != n}
            pair, n = next(iter(missing.items())) if missing else (None, None)
            if pair is None:
                return f"on {ids} you count pairs that don't occur: {set(got) - set(want)}"
            last = tuple(ids[-2:])
            if pair == last and got.get(pair, 0) == n - 1:
                return f"on {ids} you missed the last pair {last}: loop up to len(ids) - 1"
            return f"on {ids} the pair {pair} occurs {n} times, your function says {got.get(pair)}"
    return None


_MERGES = [
    (list(b"aaabdaaabac"), (97, 97), 256),
    ([1, 1, 1, 1, 1], (1, 1), 9),  # overlapping: left to right gives [9, 9, 1]
    ([1, 2, 3, 1, 2], (1, 2), 7),
    ([3, 1], (1, 2), 7),  # the pair's first id at the very end
    ([], (1, 2), 7),
]


@checker("merge", "Walk i over ids; where ids[i], ids[i+1] == pair emit new_id and skip 2.")
def check_merge(fn) -> str | None:
    """Check ``fn(ids, pair, new_id) -> list[int]``: every occurrence of pair replaced by new_id."""
    for ids, pair, new_id in _MERGES:
        original = list(ids)
        got = call(fn, ids, pair, new_id)
        want = merge(original, pair, new_id)
        if ids != original:
            return "don't change the list you were given: build and return a new list"
        if not isinstance(got, list):
            return f"return a list of ids, got {type(got).__name__}"
        if got == want:
            continue
        first_only = merge(original[:2], pair, new_id) + original[2:]
        if got == first_only or (
            pair[0] in original and got.count(new_id) == 1 < want.count(new_id)
        ):
            return f"on {original} only the first occurrence was merged: replace all of them"
        if len(got) == len(want) - 1 and got == want[:-1]:
            return f"on {original} the last id went missing: keep ids that end the list unmerged"
        if len(got) > len(want) and got.count(new_id) > want.count(new_id):
            return (
                (
                    f"on {original} with pair {pair} you merged overlapping pairs twice: after a "
                    "merge, skip both ids of the pair (expected {want}, got {got})"
                )
                .replace("{want}", str(want))
                .replace("{got}", str(got))
            )
        return f"merge({original}, {pair}, {new_id}) should be {want}, got {got}"
    return None
