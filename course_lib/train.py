"""Pretraining: batches, next-token loss, AdamW, warm-up and cosine decay, gradient clipping,
evaluation, checkpoints and exact resume. Lesson 05 derives this.

One training step, the whole of it (``train`` adds logging, evaluation and checkpoints):

    x, y = get_batch(tokens, B, T, generator)       (B, T), (B, T): y is x shifted by one
    loss = model(x, y).loss                         mean cross-entropy, in nats per token
    loss.backward()                                 d loss / d every parameter
    clip_grad_norm_(params, grad_clip)              one odd batch cannot throw the weights far
    lr = lr_at(step, ...); optimizer.step()         AdamW, at this step's learning rate

    >>> from course_lib.train import TrainConfig, train
    >>> data = {"train": load_tokens("train"), "val": load_tokens("val")}  # doctest: +SKIP
    >>> result = train(model, data, TrainConfig(max_steps=200))             # doctest: +SKIP
    >>> result.val_loss, result.history[-1]                                 # doctest: +SKIP

Runs on one process, or under ``torchrun --nproc_per_node N`` (PyTorch DDP: each process takes
1/N of every batch; gloo on CPUs, nccl on GPUs), with the same results.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm  # a widget in notebooks, text in a terminal

from course_lib.checkpoint import (
    TOKENIZER,
    Checkpoint,
    CheckpointError,
    TrainState,
    checkpoint_exists,
    load_checkpoint,
    load_train_state,
    load_weights,
    read_config,
    save_checkpoint,
)
from course_lib.data import _write_atomic, course_tokenizer, get_batch, load_tokens
from course_lib.env import checkpoint_dir, get_device, seed_everything
from course_lib.model import GPT, GPTConfig
from course_lib.tokenizer import BPETokenizer

# The course model (GPTConfig.course() trained by TrainConfig.course()): its number of steps,
# chosen by benchmarks/sweep_course_model.py, and the validation bits per character it reaches
# (evaluate_all over the 4 held-out plays), the course's stated number, within the tolerance.
COURSE_STEPS = 2631
COURSE_VAL_BPC = 2.12
COURSE_BPC_TOLERANCE = 0.02


@dataclass
class TrainConfig:
    """How to train. Steps count optimizer updates; each sees batch_size x block_size tokens.

    lr, min_lr, warmup_steps, max_steps: the schedule of ``lr_at``. stop_at_step stops early
    (with a checkpoint) while keeping the schedule of max_steps, so a resumed run goes on where
    an uninterrupted one would be; max_minutes does the same after that much wall-clock time.
    grad_clip: the largest global gradient norm (None: no clipping). eval_interval: evaluate
    every that many steps, on eval_steps batches of each split. log_path: a JSON-lines metrics
    file. checkpoint_dir: the checkpoint folder, saved every checkpoint_interval steps and at the
    end. device: None picks cuda, then mps, then cpu. compile: torch.compile the model (off:
    compiling takes longer than a course-sized run).
    """

    batch_size: int = 32
    block_size: int | None = None  # None: the model's block_size
    max_steps: int = 2000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = 1.0
    eval_interval: int = 200
    eval_steps: int = 20
    seed: int = 1337
    log_path: str | Path | None = None
    checkpoint_dir: str | Path | None = None
    checkpoint_interval: int = 500
    max_minutes: float | None = None
    stop_at_step: int | None = None
    device: str | None = None
    compile: bool = False
    progress: bool = True  # a tqdm bar (stderr) and a line per evaluation (stdout)

    @classmethod
    def course(cls, **overrides: Any) -> TrainConfig:
        """How the course model (``GPTConfig.course()``) trains: the schedule of the sweep's
        winner (benchmarks/README.md), fixed in steps so that every run gives the same model.

        COURSE_STEPS steps of 32 x 128 tokens took 7.5 minutes on the course's 2-core reference
        machine (plus about 15 s of evaluation); ``load_or_train`` caches the result.
        """
        lr = 3e-3
        schedule = dict(
            batch_size=32,
            max_steps=COURSE_STEPS,
            lr=lr,
            min_lr=lr / 10,  # as the sweep computed it, to the last bit
            warmup_steps=COURSE_STEPS // 20,
            eval_interval=250,
            eval_steps=10,
            checkpoint_interval=250,
        )
        return cls(**{**schedule, **overrides})

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # a list, when read back from JSON
        for name in ("batch_size", "max_steps", "eval_interval", "eval_steps"):
            _check_positive(name, getattr(self, name))
        _check_positive("checkpoint_interval", self.checkpoint_interval)
        if self.block_size is not None:
            _check_positive("block_size", self.block_size)
        if not 0 <= self.warmup_steps <= self.max_steps:
            raise ValueError(
                f"warmup_steps={self.warmup_steps} must be between 0 and max_steps="
                f"{self.max_steps}: a few percent of max_steps is usual, e.g. "
                f"{max(1, self.max_steps // 20)}"
            )
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(
                f"min_lr={self.min_lr} must be between 0 and lr={self.lr}: the schedule decays "
                f"from lr down to min_lr (lr / 10 is usual)"
            )
        if self.max_minutes is not None and self.max_minutes < 0:
            raise ValueError(f"max_minutes={self.max_minutes}, expected >= 0 (or None)")


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r}, expected a positive integer (>= 1)")


@dataclass
class TrainResult:
    """What ``train`` returns. Losses are in nats per token, from the last evaluation (None in
    DDP processes other than rank 0, which alone evaluates and logs)."""

    step: int  # optimizer updates done
    train_loss: float | None
    val_loss: float | None
    stopped: str  # "max_steps", "stop_at_step" or "max_minutes"
    elapsed_s: float  # training seconds, over every resumed part of the run
    checkpoint: Path | None
    history: list[dict] = field(default_factory=list)  # the metrics log, one dict per step


# ---------------------------------------------------------------------------------------------
# The pieces: schedule, optimizer, evaluation, units.


def lr_at(step: int, max_lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """The learning rate of the update at ``step`` (0-based): linear warm-up, cosine, then flat.

    * ``step < warmup_steps``: ``max_lr * (step + 1) / warmup_steps``, a line from 0 that
      step 0 starts at ``max_lr / warmup_steps`` (a first update at lr 0 would be wasted) and
      step ``warmup_steps - 1`` ends at ``max_lr``.
    * ``warmup_steps <= step < max_steps``: half a cosine from ``max_lr`` (at ``warmup_steps``)
      down towards ``min_lr``: ``min_lr + (max_lr - min_lr) * (1 + cos(pi * p)) / 2`` with
      ``p = (step - warmup_steps) / (max_steps - warmup_steps)``.
    * ``step >= max_steps``: ``min_lr`` (p = 1), for training on past the schedule.

    >>> [round(lr_at(s, 1.0, 0.1, 4, 12), 3) for s in (0, 1, 3, 4, 8, 12, 20)]
    [0.25, 0.5, 1.0, 1.0, 0.55, 0.1, 0.1]
    """
    if step < 0:
        raise ValueError(f"step={step}, expected >= 0")
    if not 0 <= warmup_steps <= max_steps:
        raise ValueError(f"warmup_steps={warmup_steps} must be between 0 and max_steps={max_steps}")
    if not 0 <= min_lr <= max_lr:
        raise ValueError(f"min_lr={min_lr} must be between 0 and max_lr={max_lr}")
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    p = (step - warmup_steps) / (max_steps - warmup_steps)  # 0 -> 1 over the decay
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * p))


def configure_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on the matrices only (Linear weights, embeddings: 2-D and more).

    Decay pulls weights towards 0. That regularises the matrices, which hold nearly all the
    parameters; a bias or a LayerNorm gain pulled to 0 just shifts or silences a feature. The
    tied wte/lm_head matrix is one parameter (``parameters()`` lists a shared one once).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # On a GPU the fused kernel updates every tensor in one launch instead of one per tensor.
    fused = bool(params) and all(p.is_cuda for p in params)
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, fused=fused)


@torch.no_grad()
def evaluate(
    model: nn.Module, tokens: Tensor, config: TrainConfig, generator: torch.Generator
) -> float:
    """Mean loss (nats per token) over ``config.eval_steps`` random batches of ``tokens`` (N,).

    The model runs in eval mode (no dropout) and is put back in the mode it was in. One batch
    is noisy; the mean of eval_steps of them is an estimate of the loss over the whole split.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    block_size = config.block_size or model.config.block_size
    losses = torch.zeros(config.eval_steps)
    for k in range(config.eval_steps):
        x, y = get_batch(tokens, config.batch_size, block_size, generator)
        with _autocast(device):
            losses[k] = model(x.to(device), y.to(device)).loss.float()
    model.train(was_training)
    return losses.mean().item()


@torch.no_grad()
def evaluate_all(model: nn.Module, tokens: Tensor, block_size: int, batch_size: int = 32) -> float:
    """Mean loss (nats per token) over the whole of ``tokens`` (N,), deterministically.

    The split is cut into consecutive windows of ``block_size`` tokens (the last partial one
    dropped) and every prediction in them counts once: the number to report for a model.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    n = (len(tokens) - 1) // block_size
    if n < 1:
        raise ValueError(f"{len(tokens)} tokens hold no window of block_size={block_size}")
    x = tokens[: n * block_size].view(n, block_size)
    y = tokens[1 : n * block_size + 1].view(n, block_size)
    total = 0.0
    for i in range(0, n, batch_size):
        with _autocast(device):
            loss = model(x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)).loss
        total += loss.float().item() * len(x[i : i + batch_size])
    model.train(was_training)
    return total / n


def bits_per_char(loss_nats_per_token: float, n_tokens: int, n_chars: int) -> float:
    """A loss in nats per token as bits per character, which compares across tokenizers.

    A text of n_chars characters is n_tokens tokens: the loss of the whole text is
    loss * n_tokens nats, so loss * n_tokens / n_chars nats per character, / ln 2 in bits.
    A bigger vocabulary makes fewer, harder tokens: its loss per token rises while its bits per
    character can fall.

    >>> round(bits_per_char(2.0, n_tokens=1000, n_chars=4000), 4)   # 4 characters per token
    0.7213
    """
    if n_tokens < 1 or n_chars < 1:
        raise ValueError(f"n_tokens={n_tokens} and n_chars={n_chars} must both be >= 1")
    return loss_nats_per_token * n_tokens / n_chars / math.log(2)


def perplexity(loss_nats_per_token: float) -> float:
    """exp(loss): the model is as unsure as a uniform choice among this many tokens."""
    return math.exp(loss_nats_per_token)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    # bfloat16 matmuls on GPUs (fast, and float32's range: no loss scaling needed). CPUs keep
    # float32, which is exactly reproducible.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------
# The loop.


def train(
    model: GPT,
    data: dict[str, Tensor],
    config: TrainConfig,
    tokenizer: BPETokenizer | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train ``model`` in place on ``data = {"train": (N,), "val": (M,)}`` token tensors.

    Evaluates on both splits every ``eval_interval`` steps and at the end, logs every step
    (``step, lr, loss, tokens, elapsed_s``, plus ``train_loss, val_loss`` when evaluated) to
    ``history`` and ``log_path``, and saves ``checkpoint_dir`` (with ``tokenizer``) every
    ``checkpoint_interval`` steps and at the end. The model moves to the config's device.
    Python's and PyTorch's global generators (dropout) are seeded with ``config.seed``; the
    batches come from a generator of their own, seeded the same.

    ``resume=True`` continues from ``checkpoint_dir`` (from step 0 if it holds no checkpoint
    yet) exactly: the weights, AdamW's moments, the batch position and every random generator
    come back, so N steps, a stop and a resume give the weights of one uninterrupted run, bit
    for bit on a CPU. The metrics log is cut back to the checkpoint's step.

    A loss that becomes nan or inf stops training with FloatingPointError naming the step; the
    last checkpoint saved is the last good one.
    """
    _check_data(data)
    block_size = config.block_size or model.config.block_size
    if block_size > model.config.block_size:
        raise ValueError(
            f"block_size={block_size} is longer than the model's context "
            f"({model.config.block_size}): use block_size <= {model.config.block_size}"
        )
    rank, world, device, own_group = _setup_distributed(config)
    finished = False
    try:
        if config.batch_size % world:
            fit = config.batch_size - config.batch_size % world or world
            raise ValueError(
                f"batch_size={config.batch_size} does not split over {world} processes: use a "
                f"multiple of {world}, e.g. {fit}"
            )
        result = _train(model, data, config, tokenizer, resume, rank, world, device, block_size)
        finished = True
        return result
    finally:
        if own_group:
            if finished:
                # Rank 0 is still evaluating and saving when the others are done: wait for it,
                # so that no process leaves while another still talks to it.
                dist.barrier()
            dist.destroy_process_group()


def _train(
    model: GPT,
    data: dict[str, Tensor],
    config: TrainConfig,
    tokenizer: BPETokenizer | None,
    resume: bool,
    rank: int,
    world: int,
    device: torch.device,
    block_size: int,
) -> TrainResult:
    model.to(device)
    optimizer = configure_optimizer(model, config)
    # One seed fixes the dropout masks (torch's global generator) and, through a generator of
    # its own, the batches: the data position is that generator's state, saved and restored.
    generator = seed_everything(config.seed)
    ckpt = Path(config.checkpoint_dir) if config.checkpoint_dir is not None else None
    state = _resume(model, optimizer, generator, ckpt, rank) if resume else None
    if state and tokenizer is None and (ckpt / TOKENIZER).is_file():
        tokenizer = BPETokenizer.load(ckpt / TOKENIZER)  # keep it in the checkpoints to come
    start = state.step if state else 0
    elapsed_before = state.elapsed_s if state else 0.0
    last_saved = start if state else None

    log_path = Path(config.log_path) if config.log_path is not None and rank == 0 else None
    history = _rewind_log(log_path, start) if log_path else []
    log = open(log_path, "a") if log_path else None  # noqa: SIM115 (closed in finally)

    net: nn.Module = model
    if world > 1:  # DDP averages the gradients of all processes during backward()
        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if config.compile:
        net = torch.compile(net)
    b = config.batch_size // world  # this process's share of each batch
    tokens_per_step = config.batch_size * block_size
    bar = tqdm(
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
    t0 = time.perf_counter()

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - t0

    def record(entry: dict) -> None:
        history.append(entry)
        if log:
            log.write(json.dumps(entry) + "\n")
            log.flush()

    def save(step: int) -> None:
        nonlocal last_saved
        if ckpt is not None and rank == 0:
            state = TrainState.capture(step, generator, elapsed())
            save_checkpoint(ckpt, model, tokenizer, optimizer, state, config)
        last_saved = step

    def evaluate_both(step: int) -> dict:
        # A generator seeded the same at every evaluation: the same batches each time, so the
        # curve shows the model changing, not the batches (and the training RNGs are untouched).
        g = torch.Generator().manual_seed(config.seed + 1)
        out = {s: evaluate(model, data[s], config, g) for s in ("train", "val")}
        if config.progress:
            bar.write(f"step {step}: train loss {out['train']:.4f}, val loss {out['val']:.4f}")
        return {"train_loss": out["train"], "val_loss": out["val"]}

    step = start
    try:
        model.train()
        while (stopped := _stop_reason(config, step, t0, world, device)) is None:
            entry: dict[str, Any] = {"step": step}
            if step % config.eval_interval == 0 and rank == 0:
                entry.update(evaluate_both(step))
            lr = lr_at(step, config.lr, config.min_lr, config.warmup_steps, config.max_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # Every process draws the same global batch and takes its own slice: together
            # they see exactly the batch one process would.
            x, y = get_batch(data["train"], config.batch_size, block_size, generator)
            x, y = x[rank * b : (rank + 1) * b].to(device), y[rank * b : (rank + 1) * b].to(device)
            with _autocast(device):
                loss = net(x, y).loss
            loss_value = _mean_over_processes(loss.detach(), world)
            if not math.isfinite(loss_value):
                where = (
                    f"the last good checkpoint is in {ckpt} (step {last_saved})"
                    if ckpt is not None and last_saved is not None
                    else "no checkpoint was saved before it"
                )
                raise FloatingPointError(
                    f"loss became {loss_value} at step {step}: lower lr (now {config.lr:g}) or "
                    f"check the data; {where}"
                )
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            entry.update(lr=lr, loss=loss_value, tokens=step * tokens_per_step)
            record({**entry, "elapsed_s": round(elapsed(), 3)})
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
            if step % config.checkpoint_interval == 0:
                save(step)

        final: dict[str, Any] = {"step": step}
        if rank == 0:
            final.update(evaluate_both(step))
        record({**final, "tokens": step * tokens_per_step, "elapsed_s": round(elapsed(), 3)})
        if last_saved != step:
            save(step)
    finally:
        bar.close()
        if log:
            log.close()
    return TrainResult(
        step=step,
        train_loss=final.get("train_loss"),
        val_loss=final.get("val_loss"),
        stopped=stopped,
        elapsed_s=elapsed(),
        checkpoint=ckpt if rank == 0 else None,
        history=history,
    )


def _check_data(data: dict[str, Tensor]) -> None:
    for split in ("train", "val"):
        tokens = data.get(split) if isinstance(data, dict) else None
        if not isinstance(tokens, Tensor) or tokens.dim() != 1:
            raise ValueError(
                f"data must be {{'train': (N,) tensor, 'val': (M,) tensor}} of token ids, "
                f"got {type(data).__name__} with {split}={type(tokens).__name__}: e.g. "
                f"{{s: load_tokens(s) for s in ('train', 'val')}}"
            )


def _setup_distributed(config: TrainConfig) -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device, whether this call started the process group).

    torchrun starts one process per worker and tells each who it is through environment
    variables: RANK (0 .. WORLD_SIZE - 1), WORLD_SIZE and LOCAL_RANK (which GPU on this machine).
    """
    device = get_device(config.device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device, False
    if device.type == "mps":
        raise ValueError("DDP (torchrun) does not run on mps: pass --device cpu")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    own = not dist.is_initialized()
    if own:  # gloo: CPUs talk over TCP; nccl: GPUs talk directly
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device, own


def _mean_over_processes(loss: Tensor, world: int) -> float:
    """The loss of the whole batch: each process has the mean over its equal share."""
    if world > 1:
        loss = loss.float().clone()
        dist.all_reduce(loss)  # sum over processes (gloo has no average)
        loss /= world
    return loss.item()


def _stop_reason(
    config: TrainConfig, step: int, t0: float, world: int, device: torch.device
) -> str | None:
    if step >= config.max_steps:
        return "max_steps"
    if config.stop_at_step is not None and step >= config.stop_at_step:
        return "stop_at_step"
    if config.max_minutes is not None:
        out_of_time = time.perf_counter() - t0 >= config.max_minutes * 60
        if world > 1:  # rank 0's clock decides for all, or one would wait for the others forever
            flag = torch.tensor([int(out_of_time)], device=device)
            dist.broadcast(flag, src=0)
            out_of_time = bool(flag.item())
        if out_of_time:
            return "max_minutes"
    return None


def _resume(
    model: GPT,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    ckpt: Path | None,
    rank: int,
) -> TrainState | None:
    """Load the checkpoint's weights, optimizer and RNG states; None if there is none yet."""
    if ckpt is None:
        raise ValueError("resume=True needs config.checkpoint_dir, the folder to resume from")
    if not checkpoint_exists(ckpt):
        if rank == 0:
            print(f"no checkpoint in {ckpt} yet: training from step 0", file=sys.stderr)
        return None
    saved, _ = read_config(ckpt)
    if saved != model.config:
        diffs = ", ".join(_differences(saved, model.config, "this model"))
        raise CheckpointError(
            f"the checkpoint in {ckpt} is of another model: {diffs}. Build the model from "
            f"load_checkpoint({str(ckpt)!r}).config to resume it, or train into another folder"
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


def _rewind_log(path: Path, start: int) -> list[dict]:
    """Keep the metrics of steps before ``start`` (all that a resumed run does not redo).

    A line cut short by a crash is dropped, and so are the steps done after the checkpoint,
    which the resumed run does again: the log then holds each step once.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = []
    if start > 0 and path.is_file():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("step", start) < start:
                kept.append(entry)
    _write_atomic(path, "".join(json.dumps(e) + "\n" for e in kept).encode())
    return kept


# ---------------------------------------------------------------------------------------------
# The course model, trained once and cached.

# What decides the weights a run ends with; the rest (evaluation, logging, saving) does not.
_SCHEDULE = ("batch_size", "block_size", "max_steps", "lr", "min_lr", "warmup_steps",
             "weight_decay", "betas", "grad_clip", "seed")  # fmt: skip


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
    ``<path>.metrics.jsonl``. A folder holding a model trained another way is never
    overwritten: the error says what differs.
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
        saved_model, saved_train = read_config(path)
        diffs = _differences(saved_model, model_config, "wanted")
        if saved_train is None:
            diffs.append("no training config")
        else:
            saved = TrainConfig(**{k: v for k, v in saved_train.items() if k in _TRAIN_FIELDS})
            diffs += _differences(saved, train_config, "wanted", _SCHEDULE)
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


_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def _differences(saved: Any, wanted: Any, label: str, names: tuple[str, ...] = ()) -> list[str]:
    """["n_embd=32 (this model: 64)", ...]: the fields (all, or ``names``) of two dataclasses
    that differ."""
    names = names or tuple(f.name for f in dataclasses.fields(saved))
    return [f"{k}={getattr(saved, k)} ({label}: {getattr(wanted, k)})"
            for k in names if getattr(saved, k) != getattr(wanted, k)]  # fmt: skip
