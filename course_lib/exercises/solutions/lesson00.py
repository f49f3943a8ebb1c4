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
