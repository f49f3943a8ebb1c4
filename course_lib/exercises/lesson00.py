"""Checkers for the exercises of Lesson 00 (notebooks/00_setup_and_data.ipynb)."""

from __future__ import annotations

from collections import Counter

from course_lib.data import Splits, Work
from course_lib.exercises import call, checker

_SAMPLES = [
    "To be, or not to be: that is the question.",
    "HAMLET.\nO, that this too too solid flesh would melt,\n",
    "",
    "aAaA  \n\n",
]


@checker("char_frequencies", "Start with an empty dict and loop over the characters of `text`.")
def check_char_frequencies(fn) -> str | None:
    """Check ``fn(text) -> dict[str, int]``: how often each character occurs."""
    for text in _SAMPLES:
        got = call(fn, text)
        want = Counter(text)
        if not isinstance(got, dict):
            return f"return a dict mapping each character to its count, got {type(got).__name__}"
        if text and any(isinstance(v, float) for v in got.values()):
            return "the values should be counts (int), not fractions: don't divide by len(text)"
        if any(len(k) != 1 for k in got if isinstance(k, str)):
            return (
                "the keys should be single characters; it looks like you counted words "
                "(did you call text.split()?)"
            )
        if got == Counter(text.lower()) != want:
            return "you lower-cased the text: 'A' and 'a' are different characters to the model"
        missing = set(want) - set(got)
        if missing:
            return (
                f"on {text!r} these characters are missing: {sorted(missing)!r}. Spaces and "
                "newlines are characters too, and the model must predict them."
            )
        wrong = {k: (got.get(k), n) for k, n in want.items() if got.get(k) != n}
        if wrong:
            ch, (g, n) = next(iter(wrong.items()))
            return f"on {text!r}, {ch!r} occurs {n} times, your function says {g}"
        if set(got) - set(want):
            return f"on {text!r} you count characters that are not in it: {set(got) - set(want)}"
    return None


def _toy_splits() -> Splits:
    def works(split: str, sizes: dict[str, int]) -> dict[str, Work]:
        return {n: Work(n, n.title(), "play", split, "x" * k) for n, k in sizes.items()}

    return Splits(
        works("train", {"a": 700, "b": 200}),
        works("val", {"c": 100}),
        works("finetune", {"d": 1000}),
    )


@checker(
    "validation_fraction",
    "The fraction is the validation plays' characters over the characters of all the plays, "
    "training and validation together.",
    "Add up len(work.text) over splits.val.values() and splits.train.values().",
)
def check_validation_fraction(fn, splits: Splits | None = None) -> str | None:
    """Check ``fn(splits) -> float``: the share of the plays' characters held out for validation."""
    toy = _toy_splits()  # train 900, val 100, finetune (poems) 1000 characters
    got = call(fn, toy)
    if not isinstance(got, float | int):
        return f"return a number (a float between 0 and 1), got {type(got).__name__}"
    if abs(got - 10.0) < 1e-9:
        return "that is a percentage (10.0): return a fraction between 0 and 1 (0.1)"
    if abs(got - 100 / 900) < 1e-9:
        return "you divided val by train: divide by train + val, all the plays"
    if abs(got - 100 / 2000) < 1e-9:
        return "the poems are not plays (they are kept for fine-tuning): leave them out"
    if abs(got - 0.1) > 1e-9:
        return f"on a toy corpus with train 900, val 100 and poems 1000 characters, expected 0.1, got {got}"  # noqa: E501
    if splits is not None:
        val = sum(len(w.text) for w in splits.val.values())
        want = val / (val + sum(len(w.text) for w in splits.train.values()))
        got = call(fn, splits)
        if abs(got - want) > 1e-9:
            return f"on the real corpus expected {want:.4f}, got {got:.4f}"
    return None


# The character-frequency model's bits per character on the held-out plays (Section 4).
UNIGRAM_BPC = 4.825


def _bigram_bpc(train: str, val: str) -> float:
    import math

    alphabet = len(set(train) | set(val))
    pairs, firsts = Counter(zip(train, train[1:])), Counter(train[:-1])
    total = sum(math.log2((pairs[a, b] + 1) / (firsts[a] + alphabet)) for a, b in zip(val, val[1:]))
    return -total / (len(val) - 1)


@checker(
    "bigram",
    "Count, in the training text, how often each character follows each other one; score every "
    "held-out character by its probability given the one before it.",
    "pairs = Counter(zip(train, train[1:])), firsts = Counter(train[:-1]); P(b | a) = "
    "(pairs[a, b] + 1) / (firsts[a] + V); average -log2 P over zip(val, val[1:]).",
)
def check_bigram(fn, splits: Splits | None = None) -> str | None:
    """Check the experiment ``fn(train_text, val_text) -> float``: the bits per character of a
    bigram model (each character given the one before, add-one smoothing over the V characters
    of both texts) on val_text. Passes when it matches, and prints how much one character of
    context saves over the character frequencies alone."""
    from course_lib.data import load_splits

    toy = ("abababab aab", "abba ab")
    if not isinstance(got := call(fn, *toy), float | int):
        return f"return a number, the bits per character, got {type(got).__name__}"
    if abs(got - (want := _bigram_bpc(*toy))) > 1e-6:
        return f"on train {toy[0]!r}, val {toy[1]!r}: expected {want:.4f} bits/char, got {got:.4f}"
    splits = splits or load_splits()
    train, val = splits.text("train"), splits.text("val")
    got, want = call(fn, train, val), _bigram_bpc(train, val)
    if abs(got - want) > 1e-3:
        return f"on the plays: expected {want:.3f} bits/char, got {got:.3f}"
    print(
        f"bigram: {got:.3f} bits/char on the held-out plays, against {UNIGRAM_BPC} for the "
        f"character frequencies: one character of context saves {UNIGRAM_BPC - got:.2f} bits"
    )
    return None
