"""Solutions to the exercises of Lesson 00 (notebooks/00_setup_and_data.ipynb)."""

from course_lib.data import Splits


def char_frequencies(text: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for ch in text:
        counts[ch] = counts.get(ch, 0) + 1
    return counts


def validation_fraction(splits: Splits) -> float:
    val = sum(len(work.text) for work in splits.val.values())
    train = sum(len(work.text) for work in splits.train.values())
    return val / (train + val)  # of the plays only: the poems are not pretraining text


def bigram(train_text, val_text):
    import math
    from collections import Counter

    alphabet = len(set(train_text) | set(val_text))  # V: every character either text uses
    pairs = Counter(zip(train_text, train_text[1:]))  # how often b follows a
    firsts = Counter(train_text[:-1])  # how often a is followed by anything
    bits = 0.0
    for a, b in zip(val_text, val_text[1:]):
        bits -= math.log2((pairs[a, b] + 1) / (firsts[a] + alphabet))  # add-one smoothing
    return bits / (len(val_text) - 1)
