"""Checkers for the exercises of Lesson 09 (your own text)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from course_lib.data import load_splits
from course_lib.exercises import call, checker

# Lines of different lengths, so that a cut that ignores line breaks lands inside a line.
_TEXTS = (
    "".join(f"line {i}: {'word ' * (i % 7)}\n" for i in range(40)),
    "No line break at the end\nof this short text, and a long last line that holds the cut",
    "Shall I compare thee to a summer's day?\nThou art more lovely and more temperate:\n" * 9,
)


def _reference(text: str, val_fraction: float) -> tuple[str, str]:
    """What ``load_splits(text_file=...)`` makes of ``text``: (train, val)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "text.txt"
        path.write_text(text, encoding="utf-8")
        splits = load_splits(text_file=path, val_fraction=val_fraction)
    return splits.text("train"), splits.text("val")


@checker(
    "split_text",
    "Keep the end of the text for validation: go (1 - val_fraction) of the way in, then back "
    "to the line break before that point, so that no line is cut in two.",
    "cut = int(len(text) * (1 - val_fraction)) is where a plain cut would go; "
    "text.rfind('\\n', 0, cut) finds the last line break before it, and the training part "
    "ends just after that line break.",
)
def check_split_text(fn) -> str | None:
    """Check ``fn(text, val_fraction) -> (train, val)``: train + val == text, val the last
    ``val_fraction`` of it, cut just after a line break, as ``load_splits(text_file=...)``."""
    for text in _TEXTS:
        for val_fraction in (0.1, 0.25):
            train, val = _reference(text, val_fraction)
            got = call(fn, text, val_fraction)
            where = f"(a text of {len(text)} characters, val_fraction {val_fraction})"
            if not isinstance(got, tuple) or len(got) != 2:
                return f"return a pair (train, val) of strings, got {type(got).__name__}"
            if got == (train, val):
                continue
            a, b = got
            plain = int(len(text) * (1 - val_fraction))
            if (a, b) == (val, train):
                return f"the pair is the wrong way round: (train, val), train first {where}"
            if b and b != text and text.startswith(b):
                return f"val is the START of the text: keep the end for validation {where}"
            if a + b != text:
                return (
                    f"train + val must give back the whole text ({len(text)} characters), "
                    f"got {len(a)} + {len(b)} that do not {where}"
                )
            if len(b) > len(a):
                return (
                    f"val has {len(b)} characters, more than train's {len(a)}: val_fraction is "
                    f"the share for validation, the small part {where}"
                )
            if len(a) == plain:
                return (
                    f"that cuts at character {plain}, in the middle of a line: move back to "
                    f"the last line break before it {where}"
                )
            if b.startswith("\n") and len(a) + 1 == len(train):
                return (
                    f"val starts with the line break: it ends the last training line, so it "
                    f"belongs to train (cut just after it) {where}"
                )
            return f"train has {len(a)} characters, expected {len(train)} {where}"
    return None
