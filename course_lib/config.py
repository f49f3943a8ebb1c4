"""The two configurations: the shape of a GPT (``GPTConfig``) and how to train it
(``TrainConfig``), with the course model's presets (``GPTConfig.course()``,
``TrainConfig.course()``). Lessons 04 (the decoder stack) and 05 (pretraining) introduce them.

Each field carries its help text, from which ``course-lib train`` builds its options.

    >>> from course_lib.config import GPTConfig, TrainConfig
    >>> GPTConfig.course().n_layer, TrainConfig.course().lr
    (3, 0.003)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from course_lib.errors import CourseError

POSITIONS = ("learned", "sinusoidal")
# The course tokenizer's vocabulary (course_lib.data trains it), chosen in Lesson 01 from a figure
# of bytes per token against vocabulary size: beyond 2048, each doubling of the embedding table
# saves only 7-9% of the tokens.
VOCAB_SIZE = 2048


@dataclass
class GPTConfig:
    """The shape of a GPT. ``C = n_embd`` is the width of the residual stream.

    vocab_size: number of token ids; block_size: the context, the most tokens the model sees at
    once; n_layer: blocks; n_head: attention heads per block, each n_embd // n_head wide;
    dropout: one rate for embeddings, attention weights and residual branches (GPT-2's
    embd_pdrop = attn_pdrop = resid_pdrop); bias: biases in the Linear layers and LayerNorms;
    positions: "learned" (GPT-2's nn.Embedding) or "sinusoidal" (a fixed table, Vaswani et al.).
    """

    vocab_size: int = field(metadata={"help": "number of token ids"})
    block_size: int = field(metadata={"help": "context length, in tokens"})
    n_layer: int = field(metadata={"help": "decoder blocks"})
    n_head: int = field(metadata={"help": "attention heads per block"})
    n_embd: int = field(metadata={"help": "width of the residual stream"})
    dropout: float = field(default=0.0, metadata={"help": "dropout rate"})
    bias: bool = field(default=True, metadata={"help": "biases in Linear and LayerNorm"})
    positions: str = field(default="learned", metadata={"help": "learned or sinusoidal"})
    layer_norm_epsilon: float = field(default=1e-5, metadata={"help": "LayerNorm's epsilon"})

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CourseError(f"{name}={value!r}, expected a positive integer (>= 1)")
        if self.n_embd % self.n_head:
            divisors = ", ".join(str(d) for d in range(1, self.n_embd + 1) if self.n_embd % d == 0)
            lower = self.n_embd - self.n_embd % self.n_head
            raise CourseError(
                f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}: each head gets "
                f"n_embd // n_head channels. Pick n_head among the divisors of n_embd "
                f"({divisors}) or n_embd a multiple of n_head (e.g. {lower or self.n_head} or "
                f"{lower + self.n_head})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise CourseError(f"dropout={self.dropout}, expected a probability in [0, 1)")
        if self.positions not in POSITIONS:
            raise CourseError(f"positions={self.positions!r}, expected one of {POSITIONS}")
        if self.positions == "sinusoidal" and self.n_embd % 2:
            raise CourseError(
                f"positions='sinusoidal' needs an even n_embd (each sine has its cosine), got "
                f"n_embd={self.n_embd}: use n_embd={self.n_embd + 1} or positions='learned'"
            )
        if not self.layer_norm_epsilon > 0:
            raise CourseError(f"layer_norm_epsilon={self.layer_norm_epsilon}, expected > 0")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def course(cls, **overrides: Any) -> GPTConfig:
        """The course model: 873,600 parameters, trained on a 2-core CPU in 7.5 minutes.

        The shape that reached the best held-out bits per character in that time, among those
        benchmarks/sweep_course_model.py tried (Lesson 05; benchmarks/README.md has the table).
        """
        shape = dict(vocab_size=VOCAB_SIZE, block_size=128, n_layer=3, n_head=4, n_embd=128)
        return cls(**{**shape, **overrides})

    @classmethod
    def gpt2(cls, **overrides: Any) -> GPTConfig:
        """GPT-2 small, the 124M model: 124,439,808 parameters (the tied lm_head counted once)."""
        shape = dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
        return cls(**{**shape, **overrides})


# The course model's number of steps (TrainConfig.course()), chosen by
# benchmarks/sweep_course_model.py; course_lib.course_model trains and caches it.
COURSE_STEPS = 2631


def _opt(default: Any, help: str) -> Any:
    """A config field and its help text (what `course-lib train --help` shows for it)."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """How to train. Steps count optimizer updates; each sees batch_size examples (windows of
    block_size tokens, by default).

    lr, min_lr, warmup_steps, max_steps: the schedule of ``lr_at``. stop_at_step stops early
    (with a checkpoint) while keeping the schedule of max_steps, so a resumed run goes on where
    an uninterrupted one would be; max_minutes does the same after that much wall-clock time.
    Weight decay pulls the base model's matrices towards 0; the matrices a change added (LoRA's
    A and B, a classifier head) are decayed only with decay_added=True. keep_best keeps, beside
    the last checkpoint (which resume needs), the one of the lowest validation loss so far in
    ``<checkpoint_dir>/best``; patience stops a run whose validation loss has not gone below its
    best for that many evaluations (early stopping).
    """

    batch_size: int = _opt(32, "examples per step (token windows by default)")
    block_size: int | None = _opt(None, "tokens per window (default: the model's context)")
    max_steps: int = _opt(2000, "optimizer steps")
    lr: float = _opt(1e-3, "peak learning rate")
    min_lr: float = _opt(1e-4, "final learning rate of the cosine decay")
    warmup_steps: int = _opt(100, "steps of linear warm-up to lr")
    weight_decay: float = _opt(0.1, "AdamW's decoupled weight decay on matrices")
    decay_added: bool = _opt(False, "also decay matrices a change added (adapters, heads)")
    betas: tuple[float, float] = _opt((0.9, 0.95), "AdamW's moment decay rates")
    grad_clip: float | None = _opt(1.0, "largest global gradient norm (None: no clipping)")
    eval_interval: int = _opt(200, "evaluate every N steps")
    eval_steps: int = _opt(20, "batches of each split per evaluation")
    seed: int = _opt(1337, "seed of batches and dropout")
    log_path: str | Path | None = _opt(None, "a JSON-lines metrics file")  # noqa: RUF009
    checkpoint_dir: str | Path | None = _opt(None, "the checkpoint folder")  # noqa: RUF009
    checkpoint_interval: int = _opt(500, "save a checkpoint every N steps (and at the end)")
    max_minutes: float | None = _opt(None, "stop (with a checkpoint) after this many minutes")
    keep_best: bool = _opt(False, "also keep the lowest-val-loss checkpoint, <checkpoint>/best")
    patience: int | None = _opt(None, "stop after N evaluations without a lower val loss")
    stop_at_step: int | None = _opt(None, "stop early at this step, keeping the schedule")
    device: str | None = _opt(None, "cpu, cuda or mps (default: the best there is)")
    compile: bool = _opt(False, "torch.compile the model (slower for course-sized runs)")
    progress: bool = _opt(True, "a progress bar and a line per evaluation")

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
            raise CourseError(
                f"warmup_steps={self.warmup_steps} must be between 0 and max_steps="
                f"{self.max_steps}: a few percent of max_steps is usual, e.g. "
                f"{max(1, self.max_steps // 20)}"
            )
        if not 0 <= self.min_lr <= self.lr:
            raise CourseError(
                f"min_lr={self.min_lr} must be between 0 and lr={self.lr}: the schedule decays "
                f"from lr down to min_lr (lr / 10 is usual)"
            )
        if self.patience is not None:
            _check_positive("patience", self.patience)
        if self.max_minutes is not None and self.max_minutes < 0:
            raise CourseError(f"max_minutes={self.max_minutes}, expected >= 0 (or None)")


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CourseError(f"{name}={value!r}, expected a positive integer (>= 1)")
