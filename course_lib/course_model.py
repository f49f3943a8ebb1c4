"""The course model: ``GPTConfig.course()`` trained by ``TrainConfig.course()``, once, and cached.

Lesson 05 (pretraining) trains it; Lessons 06 to 08 load it. ``benchmarks/sweep_course_model.py``
chose its shape and schedule (benchmarks/README.md has the table); ``COURSE_VAL_BPC`` is the
held-out bits per character it reaches (``metrics.evaluate_all`` over the 4 held-out plays),
the course's stated number, within ``COURSE_BPC_TOLERANCE``.

    >>> from course_lib.course_model import load_or_train
    >>> ckpt = load_or_train()          # about 8 minutes the first time, a second afterwards
    ...                                 # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from torch import Tensor

from course_lib.checkpoint import (
    Checkpoint,
    CheckpointError,
    checkpoint_exists,
    differences,
    load_checkpoint,
    load_train_state,
    read_meta,
)
from course_lib.config import COURSE_STEPS, TrainConfig
from course_lib.data import course_tokenizer, load_tokens
from course_lib.env import checkpoint_dir, seed_everything
from course_lib.model import GPT, GPTConfig
from course_lib.tokenizer import BPETokenizer
from course_lib.train import train
from course_lib.train_state import DEFAULT_RUN

__all__ = ["COURSE_BPC_TOLERANCE", "COURSE_STEPS", "COURSE_VAL_BPC", "load_or_train"]

COURSE_VAL_BPC = 2.12
COURSE_BPC_TOLERANCE = 0.02

# What decides the weights a run ends with; the rest (evaluation, logging, saving) does not.
_SCHEDULE = ("batch_size", "block_size", "max_steps", "lr", "min_lr", "warmup_steps",
             "weight_decay", "decay_added", "betas", "grad_clip", "seed")  # fmt: skip
_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def load_or_train(
    path: str | Path | None = None,
    model_config: GPTConfig | None = None,
    train_config: TrainConfig | None = None,
    data: dict[str, Tensor] | None = None,
    tokenizer: BPETokenizer | None = None,
    progress: bool = True,
) -> Checkpoint:
    """The course model: loaded from ``path`` (``<checkpoints>/course``) when it was trained
    there, else trained into it first (about 8 minutes on 2 CPU cores), the same way every time.

    A run that was cut short (a closed notebook, a crash) resumes where its last checkpoint
    stopped, and gives the weights of an uninterrupted run. The defaults are the course's:
    ``GPTConfig.course()``, ``TrainConfig.course()``, the corpus's token files and the course
    tokenizer; pass others to cache a model of your own the same way. The metrics log is
    ``<path>.metrics.jsonl``. A folder holding a model trained another way (another shape,
    schedule, loss, batches or trainable parameters) is never overwritten: the error says
    what differs.
    """
    path = Path(path) if path is not None else checkpoint_dir() / "course"
    model_config = model_config or GPTConfig.course()
    train_config = dataclasses.replace(
        train_config or TrainConfig.course(),
        checkpoint_dir=str(path),
        log_path=str(path.with_name(path.name + ".metrics.jsonl")),
        stop_at_step=None,
        max_minutes=None,
        progress=progress,
    )
    if checkpoint_exists(path):
        meta = read_meta(path)
        diffs = differences(GPTConfig(**meta["model"]), model_config, "wanted")
        if meta["changes"]:
            diffs.append(f"changes {meta['changes']} (wanted: none)")
        if meta["train"] is None:
            diffs.append("no training config")
        else:
            saved = TrainConfig(**{k: v for k, v in meta["train"].items() if k in _TRAIN_FIELDS})
            diffs += differences(saved, train_config, "wanted", _SCHEDULE)
        run = meta["run"] or DEFAULT_RUN
        diffs += [f"{k} {run.get(k)} (wanted: {v})" for k, v in DEFAULT_RUN.items()
                  if run.get(k) != v]  # fmt: skip
        if diffs:
            raise CheckpointError(
                f"{path} holds a model trained another way: {', '.join(diffs)}. Move or delete "
                f"that folder to train this one there, or pass another path"
            )
        state = load_train_state(path)
        if state is not None and state.step >= train_config.max_steps:
            return load_checkpoint(path)
    if data is None:
        data = {s: load_tokens(s) for s in ("train", "val")}
    seed_everything(train_config.seed)  # the initial weights; train() seeds the rest
    model = GPT(model_config)
    train(model, data, train_config, tokenizer=tokenizer or course_tokenizer(), resume=True)
    return load_checkpoint(path)
