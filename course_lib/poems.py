"""The poems of Lesson 07 (fine-tuning): a fixed held-out set, and the sonnets one by one.

Lesson 00 kept Shakespeare's five poems (the ``finetune`` split, 206,890 characters) out of
pretraining. Fine-tuning needs its own held-out text to show when it starts to overfit, and it
must be whole pieces, for the reason the plays are held out whole: lines of one poem share words
and rhymes. Held out, fixed:

* every tenth sonnet (X, XX, ..., CL: 15 of the 154), and
* one whole poem, A Lover's Complaint,

23,783 characters of 207,010 (11.5%, each sonnet under its numeral); the rest, four poems
and 139 sonnets, is for training.

    >>> from course_lib.poems import poem_splits, sonnets
    >>> texts = poem_splits()                              # doctest: +SKIP
    >>> len(texts["train"]), len(texts["val"])             # doctest: +SKIP
    (183227, 23783)
    >>> sonnets()[18].splitlines()[0]                      # doctest: +SKIP
    "Shall I compare thee to a summer's day?"
"""

from __future__ import annotations

import re

from course_lib.data import Splits, load_splits

HELD_OUT_SONNETS = tuple(range(10, 155, 10))  # X, XX, ..., CL
HELD_OUT_POEM = "lovers_complaint"
_HEADING = re.compile(r"^ *([IVXLC]+) *$", re.M)  # a sonnet's number, a roman numeral alone


def roman(n: int) -> str:
    """154 -> 'CLIV': the numeral that heads sonnet n."""
    out = ""
    for value, numeral in ((100, "C"), (90, "XC"), (50, "L"), (40, "XL"), (10, "X"), (9, "IX"),
                           (5, "V"), (4, "IV"), (1, "I")):  # fmt: skip
        while n >= value:
            out, n = out + numeral, n - value
    return out


def sonnets(splits: Splits | None = None) -> dict[int, str]:
    """{1: "From fairest creatures ...", ..., 154: ...}: each sonnet's 14 lines (12 or 15 for
    the two odd ones), its closing couplet indented by two spaces as in the book.

    Numbered by position: the file misprints the heading of sonnet 128 as CXXXIII.
    """
    text = (splits or load_splits()).finetune["sonnets"].text
    parts = _HEADING.split(text)  # [title, "I", sonnet, "II", sonnet, ...]
    found = {i + 1: body.strip("\n").rstrip() for i, body in enumerate(parts[2::2])}
    if len(found) != 154:
        raise ValueError("the sonnets file is not laid out as expected: prepare the corpus again")
    return found


def poem_splits(splits: Splits | None = None) -> dict[str, str]:
    """{"train": ..., "val": ...}: the poems with the held-out pieces apart, each piece as the
    book prints it (a sonnet under its numeral), pieces joined by blank lines."""
    splits = splits or load_splits()
    numbered = sonnets(splits)
    pieces: dict[str, list[str]] = {"train": [], "val": []}
    for n, body in numbered.items():
        pieces["val" if n in HELD_OUT_SONNETS else "train"].append(f"{roman(n)}\n\n{body}")
    for name, work in splits.finetune.items():
        if name != "sonnets":
            pieces["val" if name == HELD_OUT_POEM else "train"].append(work.text)
    return {split: "\n\n\n".join(texts) for split, texts in pieces.items()}
