"""Pretraining and every later kind of training: the loop, its schedule, checkpoints, resume.

Lesson 05 (pretraining) derives this; Lessons 07 (fine-tuning) and 08 (distillation) train
through the same loop with a loss and batches of their own.

One training step, the whole of it (``train`` adds logging, evaluation and checkpoints):

    batch = data["train"](B, generator)     default: x, y = get_batch(tokens, B, T, generator)
    loss = loss_fn(net, batch)              default: net(x, y).loss, the next-token loss
    loss.backward()                         d loss / d every trainable parameter
    clip_grad_norm_(params, grad_clip)      one odd batch cannot throw the weights far
    lr = lr_at(step, ...); optimizer.step() AdamW, at this step's learning rate

    >>> from course_lib.train import TrainConfig, train
    >>> data = {"train": load_tokens("train"), "val": load_tokens("val")}  # doctest: +SKIP
    >>> result = train(model, data, TrainConfig(max_steps=200))             # doctest: +SKIP
    >>> result.val_loss, result.history[-1]                                 # doctest: +SKIP

Each split of ``data`` is a token stream (N,), from which random windows are drawn, or a batch
source of your own: a function ``(batch_size, generator) -> batch``, a tuple of tensors whose
first dimension is the batch (passages and labels, padded poems, ...). ``loss_fn(net, batch)``
turns a batch into a scalar loss; ``net`` is the model as the loop runs it (wrapped in DDP
under torchrun), so everything that trains must run inside ``net(...)``.

Runs on one process, or under ``torchrun --nproc_per_node N`` (``course_lib.distributed``:
each process takes 1/N of every batch) with the same results.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm  # a widget in notebooks, text in a terminal

from course_lib import distributed
from course_lib.checkpoint import (
    BEST,
    TOKENIZER,
    CheckpointError,
    checkpoint_exists,
    load_train_state,
    load_weights,
    model_differences,
    read_meta,
    run_differences,
    save_checkpoint,
)
from course_lib.config import TrainConfig
from course_lib.data import get_batch
from course_lib.env import autocast, seed_everything
from course_lib.errors import CourseError
from course_lib.model import GPT
from course_lib.optim import configure_optimizer, lr_at
from course_lib.tokenizer import BPETokenizer
from course_lib.train_state import TrainState, describe_run, rewind_log

Batch = tuple[Tensor, ...]
BatchSource = Callable[[int, torch.Generator], Batch]  # (batch_size, generator) -> batch
LossFn = Callable[[nn.Module, Batch], Tensor]  # (net, batch) -> scalar loss


class DivergenceError(CourseError, FloatingPointError):
    """The loss became nan or inf; the message names the step, the fix and the last good
    checkpoint. A FloatingPointError too, as it was before CourseError."""


@dataclass
class TrainResult:
    """What ``train`` returns. Losses are in nats per token, from the last evaluation (None in
    DDP processes other than rank 0, which alone evaluates and logs)."""

    step: int  # optimizer updates done
    train_loss: float | None
    val_loss: float | None
    stopped: str  # "max_steps", "stop_at_step", "max_minutes" or "patience"
    elapsed_s: float  # training seconds, over every resumed part of the run
    checkpoint: Path | None
    history: list[dict] = field(default_factory=list)  # the metrics log, one dict per step
    best_step: int | None = None  # the evaluation of lowest val loss (kept with keep_best)
    best_val_loss: float | None = None


# ---------------------------------------------------------------------------------------------
# The pieces: schedule, optimizer, batches, loss, evaluation.


def token_batches(tokens: Tensor, block_size: int) -> BatchSource:
    """The default batch source: random windows of a token stream (N,), ``(x, y)`` with y the
    next tokens (``course_lib.data.get_batch``)."""

    def batches(batch_size: int, generator: torch.Generator) -> Batch:
        return get_batch(tokens, batch_size, block_size, generator)

    return batches


def next_token_loss(net: nn.Module, batch: Batch) -> Tensor:
    """The default loss: mean cross-entropy of each next token, in nats; batch = (x, y)."""
    x, y = batch
    return net(x, y).loss


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Tensor | BatchSource,
    config: TrainConfig,
    generator: torch.Generator,
    loss_fn: LossFn | None = None,
) -> float:
    """Mean loss over ``config.eval_steps`` random batches of ``data`` (token stream (N,) or
    batch source); the next-token loss is in nats per token.

    The model runs in eval mode (no dropout) and is put back in the mode it was in. One batch
    is noisy; the mean of eval_steps of them is an estimate of the loss over the whole split.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    draw = _source(data, config.block_size or model.config.block_size)
    loss_fn = loss_fn or next_token_loss
    losses = torch.zeros(config.eval_steps)
    for k in range(config.eval_steps):
        batch = tuple(t.to(device) for t in draw(config.batch_size, generator))
        with autocast(device):
            losses[k] = loss_fn(model, batch).float()
    model.train(was_training)
    return losses.mean().item()


def _source(data: Tensor | BatchSource, block_size: int) -> BatchSource:
    return token_batches(data, block_size) if isinstance(data, Tensor) else data


# ---------------------------------------------------------------------------------------------
# The loop.


def train(
    model: GPT,
    data: dict[str, Tensor | BatchSource],
    config: TrainConfig,
    tokenizer: BPETokenizer | None = None,
    resume: bool = False,
    loss_fn: LossFn | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``data = {"train": ..., "val": ...}``, each a token stream
    (N,) or a batch source, with ``loss_fn`` (default: ``next_token_loss``).

    Evaluates on both splits every ``eval_interval`` steps and at the end, logs every step
    (``step, lr, loss, tokens, elapsed_s``, plus ``train_loss, val_loss`` when evaluated) to
    ``history`` and ``log_path``, and saves ``checkpoint_dir`` (with ``tokenizer``, the model's
    changes, and what the run trains with) every ``checkpoint_interval`` steps and at the end.
    Only trainable parameters are updated. The model moves to the config's device. Python's and
    PyTorch's global generators (dropout) are seeded with ``config.seed``; the batches come from
    a generator of their own, seeded the same.

    ``resume=True`` continues from ``checkpoint_dir`` (from step 0 if it holds no checkpoint
    yet) exactly: the weights, AdamW's moments, the batch position and every random generator
    come back, so N steps, a stop and a resume give the weights of one uninterrupted run, bit
    for bit on a CPU. The metrics log is cut back to the checkpoint's step. A checkpoint of
    another model or another kind of run (loss, batches, trainable parameters) is refused.

    ``keep_best`` also keeps the checkpoint of lowest validation loss, ``checkpoint_dir/best``
    (``load_checkpoint`` loads it by default); ``patience`` stops the run (``stopped ==
    "patience"``) after that many evaluations without a lower one. A validation loss above the
    best is said once, when the progress is shown: the model has begun to overfit.

    A loss that becomes nan or inf stops training with DivergenceError (a FloatingPointError)
    naming the step; the last checkpoint saved is the last good one.
    """
    _check_data(data)
    if config.keep_best and config.checkpoint_dir is None:
        raise CourseError(
            "keep_best=True keeps the best checkpoint in <checkpoint_dir>/best: give "
            "checkpoint_dir, the folder to train into"
        )
    block_size = config.block_size or model.config.block_size
    if block_size > model.config.block_size:
        raise CourseError(
            f"block_size={block_size} is longer than the model's context "
            f"({model.config.block_size}): use block_size <= {model.config.block_size}"
        )
    loss_fn = loss_fn or next_token_loss
    draw = {split: _source(data[split], block_size) for split in ("train", "val")}
    procs = distributed.setup(config.device)
    completed = False
    try:
        if config.batch_size % procs.world:
            fit = config.batch_size - config.batch_size % procs.world or procs.world
            raise CourseError(
                f"batch_size={config.batch_size} does not split over {procs.world} processes: "
                f"use a multiple of {procs.world}, e.g. {fit}"
            )
        model.to(procs.device)
        optimizer = configure_optimizer(model, config)
        # One seed fixes the dropout masks (torch's global generator) and, through a generator
        # of its own, the batches: the data position is that generator's state, saved too.
        generator = seed_everything(config.seed)
        run = describe_run(model, data, loss_fn)
        ckpt = Path(config.checkpoint_dir) if config.checkpoint_dir is not None else None
        state = None
        if resume:
            state = _resume(model, optimizer, generator, ckpt, procs.rank, run)
        if state is None and ckpt is not None and procs.rank == 0:
            shutil.rmtree(ckpt / BEST, ignore_errors=True)  # an earlier run's, in this folder
        best = Best(state.best_step, state.best_val_loss) if state else Best()
        if state and tokenizer is None and (ckpt / TOKENIZER).is_file():
            tokenizer = BPETokenizer.load(ckpt / TOKENIZER)  # keep it in the checkpoints to come
        start = state.step if state else 0
        elapsed_before = state.elapsed_s if state else 0.0
        last_saved = start if state else None
        log_path = Path(config.log_path) if config.log_path and procs.rank == 0 else None
        history = rewind_log(log_path, start) if log_path else []
        net = procs.wrap(model)  # DDP averages the gradients of all processes in backward()
        if config.compile:
            net = torch.compile(net)
        tokens_per_step = config.batch_size * block_size
        bar = _progress_bar(config, start, procs.rank)
        t0 = time.perf_counter()

        def snapshot(step: int) -> TrainState:
            elapsed = elapsed_before + time.perf_counter() - t0
            return TrainState.capture(step, generator, elapsed, best.step, best.val_loss)

        def save(step: int) -> int:
            if ckpt is not None and procs.rank == 0:
                keep = (BEST,) if config.keep_best else ()
                save_checkpoint(ckpt, model, tokenizer, optimizer, snapshot(step), config, run,
                                keep=keep)  # fmt: skip
            return step

        def evaluated(step: int) -> dict[str, float]:
            losses = _evaluate_splits(model, draw, config, loss_fn, bar, step)
            bar_or_none = bar if config.progress else None
            new_best = best.update(step, losses["val_loss"], bar_or_none, config.keep_best)
            if new_best and config.keep_best:
                save_checkpoint(ckpt / BEST, model, tokenizer, None, snapshot(step), config, run)
            return losses

        step = start
        last_eval: dict[str, Any] = {}
        model.train()
        try:
            while (stopped := _stop_reason(config, step, t0, procs)) is None:
                entry: dict[str, Any] = {"step": step}
                if step % config.eval_interval == 0 and procs.rank == 0:
                    last_eval = {"step": step, **evaluated(step)}
                    entry.update(last_eval)
                if config.patience is not None and procs.rank0_says(
                    best.waited(step, config.eval_interval) >= config.patience
                ):
                    stopped = "patience"  # this step's evaluation is the run's last
                    break
                lr = lr_at(step, config.lr, config.min_lr, config.warmup_steps, config.max_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                batch = draw["train"](config.batch_size, generator)  # the global batch
                tokens_per_step = batch[0].numel()
                with autocast(procs.device):
                    loss = loss_fn(net, procs.share(batch))
                loss_value = procs.mean(loss.detach())
                if not math.isfinite(loss_value):
                    raise DivergenceError(_nan_message(loss_value, step, config, last_saved))
                loss.backward()
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                entry.update(lr=lr, loss=loss_value, tokens=step * tokens_per_step)
                _record(history, log_path, entry, elapsed_before + time.perf_counter() - t0)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
                if step % config.checkpoint_interval == 0:
                    last_saved = save(step)

            final: dict[str, Any] = {"step": step}
            if procs.rank == 0:
                final.update(last_eval if last_eval.get("step") == step else evaluated(step))
            final["tokens"] = step * tokens_per_step
            _record(history, log_path, final, elapsed_before + time.perf_counter() - t0)
            if last_saved != step:
                save(step)
        finally:
            bar.close()
        completed = True
    finally:
        procs.finish(completed)
    return TrainResult(
        step=step,
        train_loss=final.get("train_loss"),
        val_loss=final.get("val_loss"),
        stopped=stopped,
        elapsed_s=elapsed_before + time.perf_counter() - t0,
        checkpoint=ckpt if procs.rank == 0 else None,
        history=history,
        best_step=best.step,
        best_val_loss=best.val_loss,
    )


@dataclass
class Best:
    """The evaluation of lowest validation loss so far: what keep_best keeps, what patience
    counts from."""

    step: int | None = None
    val_loss: float | None = None
    warned: bool = False

    def update(self, step: int, val_loss: float, bar: tqdm | None, kept: bool) -> bool:
        """Record an evaluation; True when it is a new best. Says once when it is well above
        (by more than the 0.02 nats that evaluations of one model on other batches differ)."""
        if self.val_loss is None or val_loss < self.val_loss:
            self.step, self.val_loss = step, val_loss
            return True
        if bar is not None and not self.warned and val_loss > self.val_loss + 0.02:
            self.warned = True
            bar.write(
                f"  validation loss {val_loss:.4f} is above its best, {self.val_loss:.4f} at "
                f"step {self.step}: the model has begun to overfit; "
                + ("that step is kept, in best/" if kept else "keep_best=True would keep it")
            )
        return False

    def waited(self, step: int, eval_interval: int) -> int:
        """Evaluations since the best one (patience's count), 0 before any."""
        return 0 if self.step is None else (step - self.step) // eval_interval


def _check_data(data: dict[str, Tensor | BatchSource]) -> None:
    for split in ("train", "val"):
        value = data.get(split) if isinstance(data, dict) else None
        if not (isinstance(value, Tensor) and value.dim() == 1) and not callable(value):
            raise CourseError(
                f"data must be {{'train': ..., 'val': ...}}, each a (N,) tensor of token ids or "
                f"a batch source (batch_size, generator) -> tuple of tensors, got "
                f"{type(data).__name__} with {split}={type(value).__name__}: e.g. "
                f"{{s: load_tokens(s) for s in ('train', 'val')}}"
            )


def _progress_bar(config: TrainConfig, start: int, rank: int) -> tqdm:
    return tqdm(
        total=config.max_steps,
        initial=start,
        unit="step",
        disable=not config.progress or rank != 0,
        dynamic_ncols=True,
        # At most about 200 redraws, however long the run: a notebook kernel queues its messages
        # until they are read, and one that nobody reads live (nbval reads after the cell) drops
        # them past about a thousand, the end of the cell with them.
        miniters=max(1, config.max_steps // 200),
        mininterval=1.0,
    )


def _evaluate_splits(
    model: nn.Module,
    draw: dict[str, BatchSource],
    config: TrainConfig,
    loss_fn: LossFn,
    bar: tqdm,
    step: int,
) -> dict[str, float]:
    # A generator seeded the same at every evaluation: the same batches each time, so the curve
    # shows the model changing, not the batches (and the training RNGs are untouched).
    g = torch.Generator().manual_seed(config.seed + 1)
    out = {s: evaluate(model, draw[s], config, g, loss_fn) for s in ("train", "val")}
    if config.progress:
        bar.write(f"step {step}: train loss {out['train']:.4f}, val loss {out['val']:.4f}")
    return {"train_loss": out["train"], "val_loss": out["val"]}


def _record(history: list[dict], log_path: Path | None, entry: dict, elapsed: float) -> None:
    entry = {**entry, "elapsed_s": round(elapsed, 3)}
    history.append(entry)
    if log_path:
        with open(log_path, "a") as log:
            log.write(json.dumps(entry) + "\n")


def _nan_message(loss: float, step: int, config: TrainConfig, last_saved: int | None) -> str:
    where = (
        f"the last good checkpoint is in {config.checkpoint_dir} (step {last_saved})"
        if config.checkpoint_dir is not None and last_saved is not None
        else "no checkpoint was saved before it"
    )
    return (
        f"loss became {loss} at step {step}: lower lr (now {config.lr:g}) or check the data; "
        f"{where}"
    )


def _stop_reason(
    config: TrainConfig, step: int, t0: float, procs: distributed.Processes
) -> str | None:
    if step >= config.max_steps:
        return "max_steps"
    if config.stop_at_step is not None and step >= config.stop_at_step:
        return "stop_at_step"
    out_of_time = config.max_minutes is not None and (
        time.perf_counter() - t0 >= config.max_minutes * 60
    )
    if config.max_minutes is not None and procs.rank0_says(out_of_time):
        return "max_minutes"
    return None


def _resume(
    model: GPT,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    ckpt: Path | None,
    rank: int,
    run: dict,
) -> TrainState | None:
    """Load the checkpoint's weights, optimizer and RNG states; None if there is none yet."""
    if ckpt is None:
        raise CourseError("resume=True needs config.checkpoint_dir, the folder to resume from")
    if not checkpoint_exists(ckpt):
        if rank == 0:
            print(f"no checkpoint in {ckpt} yet: training from step 0", file=sys.stderr)
        return None
    meta = read_meta(ckpt)
    if diffs := model_differences(meta, model, "this model"):
        raise CheckpointError(
            f"the checkpoint in {ckpt} is of another model: {', '.join(diffs)}. Build the "
            f"model from load_checkpoint({str(ckpt)!r}) to resume it, or train into another "
            f"folder"
        )
    if diffs := run_differences(meta, run, "this run"):
        raise CheckpointError(
            f"the checkpoint in {ckpt} was trained another way: {', '.join(diffs)}. Resume "
            f"with the same loss, batches and trainable parameters, or train into another folder"
        )
    state = load_train_state(ckpt)
    if state is None or state.optimizer is None:
        raise CheckpointError(
            f"the checkpoint in {ckpt} has no training state (it was saved without an "
            f"optimizer), so training cannot resume exactly: train into another folder, or "
            f"load its weights with load_model and start a new run from them"
        )
    load_weights(model, ckpt)
    optimizer.load_state_dict(state.optimizer)
    state.restore_rng(generator)
    return state
