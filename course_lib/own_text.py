"""Your own text, as people have it (Lesson 09): read it, split it fairly, size a run to it.

A text is a file, a folder of files (a shelf of novels: every file under it, hidden ones
skipped) or a list of files; each file is one document. ``load_text`` splits them into
training and validation text:

* fewer than 10 documents: the last ``val_fraction`` of each (cut just after a line break),
  so that validation comes from every document, not only from the end of the last one;
* 10 or more: whole documents, every k-th in name order (k = 1 / val_fraction), so that no
  validation text shares a page with training text (as the course holds out whole plays).

``data.encode_splits`` puts ``<|endoftext|>`` after each document. ``plan_for`` sizes a run to
the text: the vocabulary, the model's shape (one knob, ``depth``), the passes over the text.

    >>> from pathlib import Path
    >>> from course_lib.own_text import load_text, plan_for
    >>> Path("my_novels").mkdir()                   # a shelf of 12 novels, a file each
    >>> for n in range(12):
    ...     _ = Path(f"my_novels/{n:02}.txt").write_text("It was a dark and stormy night.\\n" * 300)
    >>> splits = load_text("my_novels/")
    >>> len(splits.train), sorted(splits.val)       # every 10th novel held out, whole
    (11, ['09'])
    >>> plan = plan_for(splits)                     # plan.reason says why, in words
    >>> plan.vocab_size, plan.depth, plan.passes
    (1024, 2, 30.0)
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from course_lib.config import GPTConfig, TrainConfig
from course_lib.data import Splits, Work
from course_lib.errors import CourseError

WHOLE_DOCUMENTS = 10  # from this many documents on, validation takes whole ones


def read_text(path: str | Path) -> str:
    """A learner's own text file, read as UTF-8; a missing, non-UTF-8 or empty file is named
    with the fix. A byte-order mark at the start is dropped and Windows' (or old Macs') line
    ends become ``\\n``, said on stderr: the text the model sees is the same either way."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"text file {path} does not exist") from None
    except IsADirectoryError:
        folder = f"{path} is a folder: pass a file, or load_text({str(path)!r})"
        raise IsADirectoryError(folder) from None
    except UnicodeDecodeError as err:
        raise CourseError(_not_utf8(path, err.object[err.start], err.start)) from None
    fixed = []
    if text.startswith("\ufeff"):
        text = text[1:]
        fixed.append("dropped the byte-order mark at its start")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        fixed.append("turned its Windows line ends (\\r\\n) into \\n")
    if fixed:
        print(f"{path}: {' and '.join(fixed)}", file=sys.stderr)
    if not text.strip():
        raise CourseError(f"{path} is empty (or only whitespace): give a file with some text.")
    return text


def _not_utf8(path: Path, byte: int, offset: int) -> str:
    """The error for a file that is not UTF-8, with the likeliest encoding to convert from."""
    where = f"{path} is not UTF-8 text (byte 0x{byte:02x} at byte offset {offset})."
    fix = "or re-save it as UTF-8 (most editors offer this under 'Save as')."
    if 0x80 <= byte <= 0x9F:  # Windows' curly quotes and dashes; control characters in Latin-1
        return (
            f"{where} Bytes 0x80 to 0x9f are Windows' curly quotes and dashes: convert it from "
            f"cp1252, `iconv -f cp1252 -t utf-8 {path} > {path.stem}-utf8.txt` (from latin1 they "
            f"would become invisible control characters), {fix}"
        )
    return (
        f"{where} Convert it, e.g. from Latin-1: `iconv -f latin1 -t utf-8 {path} > "
        f"{path.stem}-utf8.txt`, {fix}"
    )


def text_files(source: str | Path | list[str | Path]) -> list[Path]:
    """The files a text is made of: the file itself, every file under a folder (sorted, hidden
    ones skipped), or each of a list."""
    if isinstance(source, (list, tuple)):
        return [f for s in source for f in text_files(s)]
    path = Path(source)
    if path.is_dir():
        files = sorted(
            f for f in path.rglob("*")
            if f.is_file() and not any(p.startswith(".") for p in f.relative_to(path).parts)
        )  # fmt: skip
        if not files:
            raise FileNotFoundError(f"the folder {path} holds no files: put your text files in it")
        return files
    if not path.exists():
        raise FileNotFoundError(f"text file {path} does not exist")
    return [path]


def split_document(text: str, val_fraction: float) -> tuple[str, str]:
    """(train, val): the last ``val_fraction`` of ``text`` for validation, cut just after the
    line break before that point (at that point if there is none). Lesson 09's Exercise 1."""
    cut = int(len(text) * (1 - val_fraction))
    newline = text.rfind("\n", 0, cut)
    cut = newline + 1 if newline > 0 else cut
    return text[:cut], text[cut:]


def load_text(source: str | Path | list[str | Path], val_fraction: float = 0.1) -> Splits:
    """A learner's text (a file, a folder of files, or a list of files) as ``Splits``: one
    ``Work`` a document in ``train`` and ``val`` (the rule at the top of this module);
    ``finetune`` is empty."""
    if not 0 < val_fraction < 1:
        raise CourseError(f"val_fraction must be in (0, 1), got {val_fraction}")
    files = text_files(source)
    names = _names(files)
    train: dict[str, Work] = {}
    val: dict[str, Work] = {}
    if len(files) >= WHOLE_DOCUMENTS:
        k = max(2, round(1 / val_fraction))
        for i, (name, file) in enumerate(zip(names, files)):
            part = val if i % k == k - 1 else train
            part[name] = Work(name, file.name, "text", "val" if part is val else "train",
                              read_text(file))  # fmt: skip
        return Splits(train, val, {})
    for name, file in zip(names, files):
        text = read_text(file)
        head, tail = split_document(text, val_fraction)
        if head:
            train[name] = Work(name, file.name, "text", "train", head)
        if tail:
            val[name] = Work(name, file.name, "text", "val", tail)
    if not train or not val:
        size = sum(len(w.text) for w in [*train.values(), *val.values()])
        raise CourseError(
            f"{source} is too short to split into train and val ({size} characters): give a "
            f"longer text."
        )
    return Splits(train, val, {})


def _names(files: list[Path]) -> list[str]:
    """A name a document: its file's stem, or its path where stems repeat."""
    stems = [f.stem for f in files]
    if len(set(stems)) == len(stems):
        return stems
    return [str(f.with_suffix("")).replace("\\", "/") for f in files]


# ---------------------------------------------------------------------------------------------
# A run sized to the text.


def shape(depth: int, vocab_size: int, **overrides: Any) -> GPTConfig:
    """The model of one knob, ``depth``: ``depth`` layers, 32 * (depth + 1) wide, heads of 32
    channels, a context of 64 tokens up to depth 2 and 128 from 3 on. Depth 3 is the course
    model's shape, ``GPTConfig.course()``; ``overrides`` change any field (another n_embd
    brings its own heads of 32)."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise CourseError(f"depth={depth!r}, expected a positive integer (1 to about 8 on a CPU)")
    width = int(overrides.get("n_embd", 32 * (depth + 1)))
    fields = dict(vocab_size=vocab_size, block_size=64 if depth <= 2 else 128, n_layer=depth,
                  n_head=max(1, width // 32), n_embd=width)  # fmt: skip
    return GPTConfig(**{**fields, **overrides})


# The course model's training: 2,631 steps of 32 x 128 tokens, 10.8 million tokens.
TOKEN_BUDGET = 10_800_000
PASSES = 30.0  # over a text that is small enough (plan_for's measurements)


@dataclass(frozen=True)
class Plan:
    """Defaults for a text of ``n_bytes`` (UTF-8) of training text, and why."""

    n_bytes: int
    vocab_size: int
    depth: int
    passes: float
    batch_size: int
    reason: str
    max_tokens: int | None = TOKEN_BUDGET  # None: no cap (the CLI's --passes)

    def steps(self, n_train_tokens: int, block_size: int) -> int:
        """Optimizer steps for ``passes`` over ``n_train_tokens`` in windows of block_size,
        reading at most ``max_tokens`` (but at least one pass). plan_for estimates the tokens
        from the bytes; this counts them."""
        tokens = self.passes * n_train_tokens
        if self.max_tokens is not None:
            tokens = min(tokens, max(n_train_tokens, self.max_tokens))
        return max(1, math.ceil(tokens / (self.batch_size * block_size)))

    def train_config(self, n_train_tokens: int, block_size: int, **overrides: Any) -> TrainConfig:
        """The run: ``passes`` over the text in steps of ``batch_size`` windows, the course's
        learning-rate schedule (``TrainConfig.course``: 5% warm-up, cosine down to lr / 10),
        evaluated and saved 20 times, the best checkpoint kept. ``overrides``: any TrainConfig
        field; ``checkpoint_dir`` is needed (where the best is kept)."""
        steps = self.steps(n_train_tokens, block_size)
        every = max(1, steps // 20)
        fields = dict(batch_size=self.batch_size, max_steps=steps, warmup_steps=steps // 20,
                      eval_interval=every, checkpoint_interval=every, keep_best=True)  # fmt: skip
        return TrainConfig.course(**{**fields, **overrides})


def plan_for(text: Splits | str | int) -> Plan:
    """The defaults of a run on a text: its training text (``Splits``, a string, or its size
    in UTF-8 bytes), every choice with its reason.

    Bytes, not characters, because a byte-level tokenizer starts from bytes (a Chinese
    character is 3 of them). The rules, and what benchmarks/bench_own_text.py measured behind
    them (held-out bits/char of the kept model on 50 KB of three texts: plays the course model
    never read, Python source, the plays in Cyrillic letters; benchmarks/results/own_text_*):

    * vocabulary 1024 under 3 MB, 2048 above (the course's 4.4 MB of plays use 2048): 1024
      beat 512 and 2048 on all three (plays 2.750 against 2.756 and 2.797; Python 2.985
      against 3.324 and 3.100; Cyrillic 2.772 against 2.823 and 2.854);
    * depth 2 under 1 MB: within 0.06 of the best of depths 1 to 3 on each 50 KB text (2.750,
      2.985, 2.772; the best 2.750, 2.935, 2.772), within 0.03 of depths 3 and 4 on 500 KB
      (plays 2.524 against 2.523 and 2.537; Python 3.944 against 3.934 and 3.919), at under
      half the time of depth 3. The course shape (depth 3, chosen for 4.4 MB of plays by
      benchmarks/sweep_course_model.py) up to 20 MB, 4 above; nothing was measured between
      500 KB and 4.4 MB, so the switch at 1 MB is a choice between the two;
    * 30 passes, fewer when 30 would read more tokens than the course model's 10.8 million (its
      7.5 minutes on 2 CPU cores), at least 1: estimated here from the bytes, held to by
      ``Plan.steps``, which counts the tokens. The best checkpoint is kept, so passes past the
      best cost time, not quality: 10, 30 and 100 passes reached 2.843, 2.750, 2.791 on the
      plays and 3.225, 2.985, 3.074 on Python (after 100 passes the last models, 4.928 and
      4.510, had learned their texts by heart).
    """
    if isinstance(text, Splits):
        text = text.text("train")
    n_bytes = len(text.encode("utf-8")) if isinstance(text, str) else int(text)
    kb = n_bytes / 1000
    vocab = 1024 if kb < 3000 else 2048
    depth = 2 if kb < 1000 else 3 if kb < 20_000 else 4
    est_tokens = n_bytes / {1024: 3.0, 2048: 3.5}[vocab]  # bytes per token, about
    passes = max(1.0, min(PASSES, round(TOKEN_BUDGET / est_tokens, 1)))
    width = 32 * (depth + 1)
    why_depth = {2: "a small model, which overfits later on a small text", 3: "the course shape"}
    why_passes = (
        f"{PASSES:g} passes"
        if passes == PASSES
        else f"about {passes:g} passes, so as not to read more than the course model's 10.8 "
        f"million tokens"
    )
    reason = (
        f"{n_bytes:,} bytes of training text: vocabulary {vocab}, {depth} layers x {width} "
        f"({why_depth.get(depth, 'a bigger model for a big text')}), "
        f"{why_passes}; the checkpoint of lowest validation loss is kept"
    )
    return Plan(n_bytes, vocab, depth, passes, 32 if depth >= 3 else 16, reason)
