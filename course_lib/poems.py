"""The poems of Lesson 07 (fine-tuning): a fixed held-out set, and the sonnets one by one.

Lesson 00 kept Shakespeare's five poems (the ``finetune`` split, 206,890 characters) out of
pretraining. Fine-tuning needs its own held-out text to show when it starts to overfit, and it
must be whole pieces, for the reason the plays are held out whole: lines of one poem share words
and rhymes. Held out, fixed, in two parts with two jobs, each fifteen whole sonnets:

* ``val``: every tenth sonnet from the fifth (V, XV, ..., CXLV), to choose when to stop, and
* ``test``: every tenth sonnet (X, XX, ..., CL), to report on, never used to choose anything;

each sonnet under its numeral. The rest, 124 sonnets and the four other poems, is for training.

    >>> from course_lib.poems import poem_splits, sonnets
    >>> texts = poem_splits()
    >>> [len(texts[s]) for s in ("train", "val", "test")]
    [188414, 9201, 9392]
    >>> sonnets()[18].splitlines()[0]
    "Shall I compare thee to a summer's day?"
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from course_lib.data import Splits, load_splits
from course_lib.errors import CourseError

HELD_OUT_SONNETS = tuple(range(10, 155, 10))  # X, XX, ..., CL: the test part
VALIDATION_SONNETS = tuple(range(5, 155, 10))  # V, XV, ..., CXLV: the validation part
PLAYS_SAMPLE_CHARS = 15_000  # of each held-out play, for measuring forgetting
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
        raise CourseError("the sonnets file is not laid out as expected: prepare the corpus again")
    return found


def poem_splits(splits: Splits | None = None) -> dict[str, str]:
    """{"train": ..., "val": ..., "test": ...}: the poems with the held-out sonnets apart
    (``val`` to choose a step, ``test`` to report), each piece as the book prints it (a sonnet
    under its numeral), pieces joined by blank lines."""
    splits = splits or load_splits()
    pieces: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for n, body in sonnets(splits).items():
        split = "test" if n in HELD_OUT_SONNETS else "val" if n in VALIDATION_SONNETS else "train"
        pieces[split].append(f"{roman(n)}\n\n{body}")
    pieces["train"] += [work.text for name, work in splits.finetune.items() if name != "sonnets"]
    return {split: "\n\n\n".join(texts) for split, texts in pieces.items()}


def plays_sample(splits: Splits | None = None, chars: int = PLAYS_SAMPLE_CHARS) -> str:
    """The first ``chars`` characters of each held-out play (``data.VALIDATION_PLAYS``, one of
    each genre), joined by blank lines: what fine-tuning on poems may make a model forget,
    small enough to measure after every run (60,000 characters, about 23,000 tokens)."""
    splits = splits or load_splits()
    return "\n\n\n".join(work.text[:chars] for work in splits.val.values())


# ---------------------------------------------------------------------------------------------
# The form of a sonnet, measured: 14 lines, the closing couplet indented, about 10 syllables.

_VOWEL_GROUPS = re.compile(r"[aeiouy]+")


def syllables(line: str) -> int:
    """An approximate syllable count: the groups of vowels in each word, a silent final e
    dropped, at least one a word. "Shall I compare thee to a summer's day?" -> 10.

    >>> syllables("Shall I compare thee to a summer's day?")
    10
    """
    count = 0
    for word in re.findall(r"[a-z']+", line.lower()):
        word = word.replace("'", "")
        groups = len(_VOWEL_GROUPS.findall(word))
        if word.endswith("e") and not word.endswith(("le", "ee")) and groups > 1:
            groups -= 1  # "compare", "time": the final e is silent
        count += max(groups, 1 if word else 0)
    return count


@dataclass(frozen=True)
class SonnetForm:
    """What a poem's shape says: its lines (not counting blank ones), whether its last two lines
    are indented (as the book sets a closing couplet), its mean syllables per line, and whether
    it ended (a heading, a triple line break or ``<|endoftext|>`` followed it) or ran on to the
    end of the text."""

    lines: int
    indented_couplet: bool
    mean_syllables: float
    ended: bool = False

    @property
    def is_sonnet_shaped(self) -> bool:
        """14 lines ending in an indented couplet."""
        return self.lines == 14 and self.indented_couplet


def sonnet_form(text: str) -> SonnetForm:
    """The form of the first poem in ``text`` (what follows a numeral heading, up to the next
    heading, a triple line break or ``<|endoftext|>``).

    >>> form = sonnet_form("I\\n\\nOne line,\\nand two.\\n\\n\\nII\\n\\nThe next")
    >>> form.lines, form.ended
    (2, True)
    """
    first = text.split("<|endoftext|>")[0].split("\n\n\n")[0]
    ended = len(first) < len(text)
    lines = []
    for line in first.strip("\n").splitlines():
        if _HEADING.fullmatch(line) and lines:
            ended = True
            break  # the next sonnet begins
        if line.strip() and not _HEADING.fullmatch(line):
            lines.append(line)
    if not lines:
        return SonnetForm(0, False, 0.0, ended)
    indented = len(lines) >= 2 and all(line.startswith("  ") for line in lines[-2:])
    return SonnetForm(len(lines), indented, sum(map(syllables, lines)) / len(lines), ended)
