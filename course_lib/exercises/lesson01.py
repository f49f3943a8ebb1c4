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


@checker(
    "pair_counts",
    "Every id and the one after it form a pair; count how often each pair occurs.",
    "Loop over neighbours with zip(ids, ids[1:]) and count each pair.",
)
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


# A few merges learned from a short text, in the order they were learned: some build on
# others (" th" needs "th" first), so the order in which they are applied matters.
_TEXT = "the other thee that then there these those the the he she then other " * 4
_WORDS = ["the", " there", " other", " those", " she", "xyz", "t", ""]


def _merges() -> dict[tuple[int, int], int]:
    from course_lib.tokenizer import BPETokenizer

    tok = BPETokenizer()
    tok.train(_TEXT, vocab_size=256 + 14 + 1)
    return dict(tok.merges)


def _encode_word(ids: list[int], merges: dict[tuple[int, int], int]) -> list[int]:
    while len(ids) >= 2:
        pair = min(pairwise(ids), key=lambda p: merges.get(p, float("inf")))
        if pair not in merges:
            return ids
        ids = merge(ids, pair, merges[pair])
    return ids


@checker(
    "encode_word",
    "Apply the learned merges until no neighbouring pair of the word is one of them, the "
    "earliest-learned first: a later merge may need an id that an earlier one made.",
    "Loop: among pairwise(ids), take the pair with the smallest merges.get(pair, inf); stop if "
    "it is not in merges, else ids = merge(ids, pair, merges[pair]).",
)
def check_encode_word(fn) -> str | None:
    """Check ``fn(ids, merges) -> list[int]``: a word's bytes encoded with learned merges."""
    merges = _merges()
    wrong = []  # (word, what it should be, what it was, the mistakes that explain it)
    for word in _WORDS:
        ids = list(word.encode("utf-8"))
        original, given = list(ids), dict(merges)
        got = call(fn, ids, given)
        want = _encode_word(original, merges)
        if ids != original or given != merges:
            return "don't change the ids or the merges you were given: build a new list"
        if not isinstance(got, list):
            return f"return a list of ids, got {type(got).__name__}"
        if got != want:
            wrong.append((word, want, got, _mistakes(original, merges, got)))
    if not wrong:
        return None
    # A word that only one mistake explains tells which it is.
    word, want, got, mistakes = min(wrong, key=lambda w: len(w[3]) != 1)
    if len(mistakes) == 1:
        return f"on {word!r} {mistakes[0]}"
    return f"{word!r} ({list(word.encode())}) should encode to {want}, got {got}"


def _mistakes(ids: list[int], merges: dict[tuple[int, int], int], got: list[int]) -> list[str]:
    found = []
    reverse = list(ids)
    for pair, new_id in reversed(merges.items()):
        reverse = merge(reverse, pair, new_id)
    if got == reverse:
        found.append(
            "the merges were applied last-learned first: a later merge joins ids that earlier "
            "merges made, so apply the earliest first"
        )
    once = min(pairwise(ids), key=lambda p: merges.get(p, float("inf")), default=None)
    if once in merges and got == merge(ids, once, merges[once]):
        found.append("only one merge was applied: keep merging while a pair matches")
    return found


@checker(
    "less_text",
    "Train a new BPETokenizer to the course's size, 2048 tokens, on the first tenth of the "
    "training text only, and return it.",
    "tok = BPETokenizer(); tok.train(train_text[: len(train_text) // 10], vocab_size=2048).",
)
def check_less_text(fn) -> str | None:
    """Check the experiment ``fn(train_text) -> BPETokenizer``: the course's tokenizer size
    trained on a tenth of the text. Passes when it is, and measures what less text costs:
    bytes per token on the held-out plays, against the course tokenizer's."""
    from course_lib.data import course_tokenizer, load_splits
    from course_lib.tokenizer import BPETokenizer

    splits = load_splits()
    train, val = splits.text("train"), splits.text("val")
    tok = call(fn, train)
    if not isinstance(tok, BPETokenizer):
        return f"return the trained BPETokenizer, got {type(tok).__name__}"
    if tok.vocab_size != 2048:
        return f"train it to the course's size, vocab_size=2048, got {tok.vocab_size}"
    want = BPETokenizer()
    want.train(train[: len(train) // 10], vocab_size=2048)
    if tok.merges != want.merges:
        return "its merges differ from training on train_text[: len(train_text) // 10]"
    size = len(val.encode("utf-8"))
    per_token = {
        name: size / len(t.fast().encode(val).ids)
        for name, t in [("a tenth of the text", tok), ("all of it", course_tokenizer())]
    }
    print(
        "bytes per token on the held-out plays: "
        + ", ".join(f"{v:.3f} trained on {k}" for k, v in per_token.items())
    )
    if not per_token["a tenth of the text"] < per_token["all of it"]:
        return "less text compressed as well: compare on the held-out plays again"
    return None
