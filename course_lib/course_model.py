"""The course model: ``GPTConfig.course()`` trained by ``TrainConfig.course()``, once, and cached.

Lesson 05 (pretraining) trains it; Lessons 06 to 08 load it. ``benchmarks/sweep_course_model.py``
chose its shape and schedule (benchmarks/README.md has the table); ``COURSE_VAL_BPC`` is the
held-out bits per character it reaches (``metrics.evaluate_all`` over the 4 held-out plays),
the course's stated number, within ``COURSE_BPC_TOLERANCE``. ``cached_train`` is the cache
itself, for any model a lesson trains once (Lesson 07's fine-tuned models too).

    >>> from course_lib.course_model import load_or_train
    >>> ckpt = load_or_train()          # about 8 minutes the first time, a second afterwards
    ...                                 # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from torch import Tensor

from course_lib.checkpoint import (
    BEST,
    Checkpoint,
    CheckpointError,
    checkpoint_exists,
    differences,
    load_checkpoint,
    load_train_state,
    model_differences,
    read_meta,
    run_differences,
)
from course_lib.config import COURSE_STEPS, TrainConfig
from course_lib.data import course_tokenizer, load_tokens
from course_lib.env import checkpoint_dir, seed_everything
from course_lib.model import GPT, GPTConfig
from course_lib.tokenizer import BPETokenizer
from course_lib.train import BatchSource, LossFn, next_token_loss, train
from course_lib.train_state import describe_run

__all__ = [
    "COURSE_BPC_TOLERANCE",
    "COURSE_STEPS",
    "COURSE_VAL_BPC",
    "cached_train",
    "load_or_train",
]

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

    The defaults are the course's: ``GPTConfig.course()``, ``TrainConfig.course()``, the
    corpus's token files and the course tokenizer; pass others to cache a model of your own
    the same way (``cached_train`` says how the cache behaves).
    """
    train_config = train_config or TrainConfig.course()

    def build() -> GPT:
        seed_everything(train_config.seed)  # the initial weights; train() seeds the rest
        return GPT(model_config or GPTConfig.course())

    return cached_train(
        Path(path) if path is not None else checkpoint_dir() / "course",
        build,
        data if data is not None else {s: load_tokens(s) for s in ("train", "val")},
        train_config,
        tokenizer=tokenizer or course_tokenizer(),
        progress=progress,
    )


def cached_train(
    path: str | Path,
    build: Callable[[], GPT],
    data: dict[str, Tensor | BatchSource],
    config: TrainConfig,
    loss_fn: LossFn | None = None,
    tokenizer: BPETokenizer | None = None,
    progress: bool = True,
) -> Checkpoint:
    """Train ``build()`` on ``data`` with ``config`` into the checkpoint ``path`` once; load it
    from there every time after. Lessons cache what they train this way (Lesson 07's
    fine-tuned models: ``build`` loads the course model and adds the adapters).

    A run that was cut short (a closed notebook, a crash) resumes where its last checkpoint
    stopped, and gives the weights of an uninterrupted run. The metrics log is
    ``<path>.metrics.jsonl``. With ``config.stop_at_step`` the model is the one at that step of
    the max_steps schedule (early stopping at a step a longer run found best). A folder holding
    a model trained another way (another shape, changes, schedule, loss, batches or trainable
    parameters) is never overwritten: the error says what differs.
    """
    path = Path(path)
    config = dataclasses.replace(
        config,
        checkpoint_dir=str(path),
        log_path=str(path.with_name(path.name + ".metrics.jsonl")),
        max_minutes=None,
        progress=progress,
    )
    model = build()
    loss_fn = loss_fn or next_token_loss
    if checkpoint_exists(path):
        meta = read_meta(path)
        diffs = model_differences(meta, model, "wanted")
        if meta["train"] is None:
            diffs.append("no training config")
        else:
            saved = TrainConfig(**{k: v for k, v in meta["train"].items() if k in _TRAIN_FIELDS})
            diffs += differences(saved, config, "wanted", _SCHEDULE)
        diffs += run_differences(meta, describe_run(model, data, loss_fn), "wanted")
        if diffs:
            raise CheckpointError(
                f"{path} holds a model trained another way: {', '.join(diffs)}. Move or delete "
                f"that folder to train this one there, or pass another path"
            )
        state, last = load_train_state(path), config.stop_at_step or config.max_steps
        if state is not None and state.step > last:
            raise CheckpointError(
                f"{path} holds the model at step {state.step}, past the step {last} wanted: "
                f"training cannot go back, so move or delete that folder, or pass another path"
            )
        if state is not None and state.step == last:
            if config.keep_best and not checkpoint_exists(path / BEST):
                raise CheckpointError(
                    f"{path} was trained without keep_best, so it has no {BEST}/ model to load: "
                    f"move or delete that folder to train it again, keeping the best"
                )
            return load_checkpoint(path)
    train(model, data, config, tokenizer=tokenizer, resume=True, loss_fn=loss_fn)
    return load_checkpoint(path)
