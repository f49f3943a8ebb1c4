"""Knowledge distillation: a small student GPT trained to predict what a large teacher predicts.

Lesson 08 (compression) derives this, after Hinton, Vinyals & Dean (2015), "Distilling the
Knowledge in a Neural Network".

The next-token loss trains on one-hot targets: the token that came next, nothing else. A
trained teacher knows more than that: its distribution over the whole vocabulary says which
wrong tokens were almost right (after "thou" a verb is likelier than a noun). Its probabilities
are the student's *soft targets*, and matching them teaches in every position what one token
cannot.

Most of that knowledge sits in small probabilities, which give almost no gradient. A
*temperature* T softens both distributions first, raising the small ones:

    p_T = softmax(teacher_logits / T)      (..., V)  the soft targets
    q_T = softmax(student_logits / T)      (..., V)  the student, softened the same way
    distill_loss = T² · mean over positions of KL(p_T || q_T),  KL = Σ_v p_T (log p_T - log q_T)

T = 1 is the teacher's own distribution; T = 2 to 4 is usual. Why the T² factor: the gradient
of KL(p_T || q_T) with respect to a student logit z_i is (q_i - p_i) / T, and once T is large
against the logits, q_i - p_i ≈ (z_i - v_i) / (V T) for centred logits z (student) and v
(teacher): the gradient shrinks as 1 / T². Multiplying by T² keeps its size as T changes, so
that the training loss,

    loss = alpha · distill_loss + (1 - alpha) · next-token cross-entropy,

mixes the two in the proportion alpha says whatever T is. At high T, T² · KL tends to
Σ_v (z_v - v_v)² / 2V over the centred logits: matching the teacher's logits themselves.

    >>> import torch
    >>> from course_lib.compress.distill import distill_loss
    >>> teacher = torch.tensor([[4.0, 2.0, 1.0, -1.0]])            # (positions, V) logits
    >>> for T in (1.0, 4.0):                                        # softer targets at high T
    ...     print(T, [round(p, 2) for p in torch.softmax(teacher / T, -1)[0].tolist()])
    1.0 [0.84, 0.11, 0.04, 0.01]
    4.0 [0.42, 0.26, 0.2, 0.12]
    >>> distill_loss(teacher, teacher)                              # the same beliefs: 0 nats
    tensor(0.)
    >>> student = torch.zeros(1, 4)                                 # uniform: no opinion yet
    >>> [round(distill_loss(student, teacher, T).item(), 2) for T in (1.0, 2.0, 4.0, 100.0)]
    [0.83, 1.32, 1.54, 1.62]
    >>> d = (student - teacher) - (student - teacher).mean()        # the high-T limit
    >>> round((d**2).sum().item() / (2 * 4), 2)
    1.62

``distill`` trains a student with ``train`` and a ``DistillationLoss``; the student must share
the teacher's tokenizer (the soft targets are over the teacher's vocabulary):

    >>> result = distill(student, teacher, data, TrainConfig(max_steps=500))  # doctest: +SKIP

The teacher need not run in the loop. ``teacher_targets`` runs it once over a token stream, cut
into windows of its context, and keeps at each position the log-probabilities of its k likeliest
next tokens (float16, with their ids): k x 4 bytes a token. Every student that trains on those
windows (``TeacherTargets.batches``) shares that one pass, and ``topk_distill_loss`` compares
the distributions on the k tokens plus one bin for all the others: the KL divergence of the
coarser distributions, which equals ``distill_loss`` when k is the whole vocabulary and is never
larger (merging outcomes cannot make two distributions more different).

    >>> targets = teacher_targets(teacher, tokens, T=1.0, k=32)                 # doctest: +SKIP
    >>> train(student, {"train": targets.batches, "val": val_targets.batches}, config,
    ...       loss_fn=CachedDistillationLoss(targets.T, alpha=1.0))          # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from course_lib.config import TrainConfig
from course_lib.errors import CourseError
from course_lib.files import write_atomic
from course_lib.model import GPT
from course_lib.tokenizer import BPETokenizer
from course_lib.train import Batch, BatchSource, TrainResult, train

__all__ = [
    "CachedDistillationLoss",
    "DistillationLoss",
    "TeacherTargets",
    "distill",
    "distill_loss",
    "teacher_targets",
    "topk_distill_loss",
]


def distill_loss(student_logits: Tensor, teacher_logits: Tensor, T: float = 2.0) -> Tensor:
    """T² · KL(p_T || q_T) in nats, averaged over positions: a scalar.

    student_logits, teacher_logits: (..., V), e.g. (B, T, V); p_T = softmax(teacher / T) are
    the soft targets, q_T = softmax(student / T) the student's predictions at the same T.
    Forward KL, teacher first: it is 0 when the two agree and large where the teacher expects
    a token the student does not. Computed in float32 at least (float64 stays float64).
    """
    _check_temperature(T)
    if student_logits.dim() == 0 or teacher_logits.dim() == 0:
        raise CourseError("logits must be (..., V), one score per vocabulary entry; got a scalar")
    V_s, V_t = student_logits.size(-1), teacher_logits.size(-1)
    if V_s != V_t:
        raise _vocab_error(V_s, V_t)
    if student_logits.shape != teacher_logits.shape:
        raise CourseError(
            f"student_logits {tuple(student_logits.shape)} and teacher_logits "
            f"{tuple(teacher_logits.shape)} differ in shape: give both (..., V) for the same "
            f"batch of positions (run the teacher on the student's x)"
        )
    dtype = torch.promote_types(student_logits.dtype, teacher_logits.dtype)
    dtype = torch.promote_types(dtype, torch.float32)  # bfloat16 logits (autocast): float32
    log_p = torch.log_softmax(teacher_logits.to(dtype) / T, dim=-1)  # (..., V) soft targets
    log_q = torch.log_softmax(student_logits.to(dtype) / T, dim=-1)  # (..., V)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1)  # (...,) one KL per position
    return T**2 * kl.mean()


class DistillationLoss:
    """A ``loss_fn`` for ``train``: alpha · distill_loss + (1 - alpha) · next-token loss.

    ``loss_fn(net, (x, y))``: the student ``net(x, y)`` gives its logits (B, T, V) and its hard
    next-token loss; the teacher's logits (B, T, V) come from ``teacher(x)`` without gradients.
    The teacher is frozen (``requires_grad`` False on every parameter) and runs in eval mode (no
    dropout, nothing drawn from the random generators, so exact resume holds); it moves to x's
    device on first use. alpha = 1 trains on the soft targets alone, alpha = 0 is plain
    pretraining.
    """

    def __init__(self, teacher: GPT, T: float = 2.0, alpha: float = 0.5) -> None:
        _check_temperature(T)
        _check_alpha(alpha)
        self.teacher, self.T, self.alpha = teacher, float(T), float(alpha)
        # The name a checkpoint records for the run's loss (train_state.describe_run): with T
        # and alpha in it, a cached run distilled at another temperature is not taken for this.
        self.__qualname__ = f"DistillationLoss(T={self.T:g}, alpha={self.alpha:g})"
        teacher.requires_grad_(False)
        teacher.eval()

    def __call__(self, net: nn.Module, batch: Batch) -> Tensor:
        if len(batch) != 2:
            raise CourseError(
                f"DistillationLoss takes batches (x, y) of token ids (B, T), got a batch of "
                f"{len(batch)} tensors: train on token streams or a source of (x, y) batches"
            )
        x, y = batch
        out = net(x, y)  # the student: logits (B, T, V_s), hard loss
        V_s, V_t = out.logits.size(-1), self.teacher.config.vocab_size
        if V_s != V_t:  # before the teacher reads ids it may not have
            raise _vocab_error(V_s, V_t)
        if next(self.teacher.parameters()).device != x.device:
            self.teacher.to(x.device)
        self.teacher.eval()
        with torch.no_grad():
            teacher_logits = self.teacher(x).logits  # (B, T, V)
        soft = distill_loss(out.logits, teacher_logits, self.T)
        return self.alpha * soft + (1 - self.alpha) * out.loss

    def __repr__(self) -> str:
        return f"DistillationLoss(T={self.T}, alpha={self.alpha})"


def distill(
    student: GPT,
    teacher: GPT,
    data: dict[str, Tensor | BatchSource],
    config: TrainConfig,
    T: float = 2.0,
    alpha: float = 0.5,
    tokenizer: BPETokenizer | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train ``student`` in place to match ``teacher`` (``DistillationLoss(teacher, T, alpha)``)
    on ``data``, with ``train``'s loop, checkpoints and exact resume.

    The two must share a vocabulary (and tokenizer), and the teacher must see the whole
    training window. The teacher is frozen and put in eval mode; its losses are not logged:
    ``train_loss`` and ``val_loss`` are the distillation loss the student trains on.
    """
    if student is teacher:
        raise CourseError("student and teacher are the same model: build a new, smaller student")
    V_s, V_t = student.config.vocab_size, teacher.config.vocab_size
    if V_s != V_t:
        raise _vocab_error(V_s, V_t)
    block_size = config.block_size or student.config.block_size
    if block_size > teacher.config.block_size:
        raise CourseError(
            f"training windows of {block_size} tokens are longer than the teacher's context "
            f"(block_size={teacher.config.block_size}): train with "
            f"TrainConfig(block_size={teacher.config.block_size}) or less"
        )
    loss_fn = DistillationLoss(teacher, T, alpha)
    return train(student, data, config, tokenizer, resume, loss_fn=loss_fn)


# ---------------------------------------------------------------------------------------------
# The teacher run once: its top-k soft targets, cached and shared by students


def topk_distill_loss(student_logits: Tensor, log_p: Tensor, ids: Tensor, T: float = 1.0) -> Tensor:
    """T² · KL over k + 1 bins, averaged over positions: a scalar.

    student_logits (..., V); log_p (..., k): the teacher's log p_T of its k likeliest tokens, at
    the ids (..., k). The bins are those k tokens and "any other token", whose probability is
    what the k leave: 1 - sum(p) for the teacher, the rest of softmax(student / T) for the
    student. With k = V this is ``distill_loss``; with k < V it is at most that.
    """
    _check_temperature(T)
    if log_p.shape != ids.shape or log_p.shape[:-1] != student_logits.shape[:-1]:
        raise CourseError(
            f"log_p {tuple(log_p.shape)} and ids {tuple(ids.shape)} must both be (..., k) for the "
            f"student's positions {tuple(student_logits.shape[:-1])}: the teacher's targets for "
            f"the same batch (TeacherTargets.batches gives them together)"
        )
    log_q = torch.log_softmax(student_logits.float() / T, dim=-1)  # (..., V)
    ids = ids.long()
    log_q_k = log_q.gather(-1, ids)  # (..., k) the student on the teacher's k tokens
    log_p = log_p.float()
    kl = (log_p.exp() * (log_p - log_q_k)).sum(-1)  # (...,) the k bins
    if ids.size(-1) < student_logits.size(-1):  # the bin of every other token
        q_rest = (1 - log_q_k.exp().sum(-1)).clamp_min(1e-30)  # (...,) what the k leave
        p_rest = (1 - log_p.exp().sum(-1)).clamp_min(0)  # (...,)
        kl = kl + torch.xlogy(p_rest, p_rest) - p_rest * q_rest.log()  # 0 log 0 = 0
    return T**2 * kl.mean()


@dataclass
class TeacherTargets:
    """A teacher's soft targets for every window of a token stream, computed once.

    tokens (N,): the stream; window j is ``tokens[j * block : j * block + block + 1]`` (x, and y
    one token on). log_p (n, block, k) float16: the teacher's log p_T of its k likeliest next
    tokens at each position of each window; ids (n, block, k) int16 or int32: those tokens.
    seconds: how long the teacher took (the one-time cost that the students share).
    """

    tokens: Tensor
    log_p: Tensor
    ids: Tensor
    T: float
    seconds: float

    @property
    def block_size(self) -> int:
        return self.log_p.size(1)

    def batches(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, ...]:
        """A ``train`` batch source: ``batch_size`` windows at random, as (x, y, log_p, ids),
        (B, block) twice, then (B, block, k) twice."""
        j = torch.randint(self.log_p.size(0), (batch_size,), generator=generator)  # (B,)
        block = self.block_size
        at = j[:, None] * block + torch.arange(block + 1)  # (B, block + 1) positions in tokens
        window = self.tokens[at].long()
        return window[:, :-1], window[:, 1:], self.log_p[j], self.ids[j]

    def nbytes(self) -> int:
        """Bytes of the cached targets (log_p and ids), the disk and memory they cost."""
        return sum(t.numel() * t.element_size() for t in (self.log_p, self.ids))

    def save(self, path: Path | str) -> Path:
        """One safetensors file, written atomically; ``TeacherTargets.load(path)`` reads it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"tokens": self.tokens, "log_p": self.log_p, "ids": self.ids}
        meta = {"T": repr(self.T), "seconds": repr(self.seconds)}
        write_atomic(path, safetensors.torch.save(tensors, metadata=meta))
        return path

    @classmethod
    def load(cls, path: Path | str) -> TeacherTargets:
        with safetensors.safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            tensors = {name: f.get_tensor(name) for name in ("tokens", "log_p", "ids")}
        return cls(**tensors, T=float(meta["T"]), seconds=float(meta["seconds"]))


@torch.inference_mode()
def teacher_targets(
    teacher: GPT,
    tokens: Tensor,
    T: float = 1.0,
    k: int = 32,
    batch_size: int = 32,
    progress: bool = True,
) -> TeacherTargets:
    """Run ``teacher`` once over ``tokens`` (N,), in windows of its block_size, and keep its top
    ``k`` log-probabilities at temperature ``T`` at every position (``TeacherTargets``)."""
    _check_temperature(T)
    V, block = teacher.config.vocab_size, teacher.config.block_size
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= V:
        raise CourseError(f"k={k!r}, expected an integer from 1 to the vocabulary's {V}, e.g. 32")
    if tokens.dim() != 1 or len(tokens) <= block:
        raise CourseError(
            f"tokens must be one stream (N,) longer than the teacher's block_size={block}, got "
            f"shape {tuple(tokens.shape)}"
        )
    n = (len(tokens) - 1) // block  # whole windows, each with its next token
    device = next(teacher.parameters()).device
    was_training = teacher.training
    teacher.eval()
    log_p = torch.empty(n, block, k, dtype=torch.float16)
    ids = torch.empty(n, block, k, dtype=torch.int16 if V <= 2**15 else torch.int32)
    start = time.perf_counter()
    for i in tqdm(range(0, n, batch_size), disable=not progress, desc="teacher", miniters=n // 100):
        j = torch.arange(i, min(i + batch_size, n))
        x = tokens[j[:, None] * block + torch.arange(block)].long().to(device)  # (b, block)
        top = torch.log_softmax(teacher(x).logits.float() / T, dim=-1).topk(k, dim=-1)
        log_p[j], ids[j] = top.values.cpu().half(), top.indices.cpu().to(ids.dtype)
    teacher.train(was_training)
    return TeacherTargets(tokens, log_p, ids, float(T), time.perf_counter() - start)


class CachedDistillationLoss:
    """A ``loss_fn`` for ``train`` on ``TeacherTargets.batches``: alpha · topk_distill_loss +
    (1 - alpha) · next-token loss, from batches (x, y, log_p, ids). No teacher runs."""

    def __init__(self, T: float, alpha: float = 1.0) -> None:
        _check_temperature(T)
        _check_alpha(alpha)
        self.T, self.alpha = float(T), float(alpha)
        self.__qualname__ = f"CachedDistillationLoss(T={self.T:g}, alpha={self.alpha:g})"

    def __call__(self, net: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        if len(batch) != 4:
            raise CourseError(
                f"CachedDistillationLoss takes batches (x, y, log_p, ids) from "
                f"TeacherTargets.batches, got {len(batch)} tensors: build TeacherTargets for "
                f"every split it trains and evaluates on (train and val)"
            )
        x, y, log_p, ids = batch
        out = net(x, y)
        soft = topk_distill_loss(out.logits, log_p, ids, self.T)
        return self.alpha * soft + (1 - self.alpha) * out.loss

    def __repr__(self) -> str:
        return self.__qualname__


def _check_temperature(T: float) -> None:
    if isinstance(T, bool) or not isinstance(T, (int, float)) or not (math.isfinite(T) and T > 0):
        raise CourseError(
            f"T={T!r}, expected a positive finite temperature: 1 keeps the teacher's "
            f"distribution, larger softens it (2 to 4 is usual)"
        )


def _check_alpha(alpha: float) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise CourseError(
            f"alpha={alpha!r}, expected a weight in [0, 1]: the share of the distillation "
            f"loss (1 - alpha goes to the next-token loss), e.g. 0.5"
        )


def _vocab_error(V_s: int, V_t: int) -> CourseError:
    return CourseError(
        f"the student's vocabulary ({V_s}) differs from the teacher's ({V_t}): the soft targets "
        f"would not line up; build the student with the teacher's vocab_size and tokenizer"
    )
