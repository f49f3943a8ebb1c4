"""How good a language model is, in numbers that compare: nats per token over a whole text,
bits per character, perplexity. Lesson 05 (pretraining) derives these; Lessons 07 and 08
report every model in them.

    >>> from course_lib.metrics import bits_per_char, perplexity
    >>> round(bits_per_char(2.0, n_tokens=1000, n_chars=4000), 4)   # 4 characters per token
    0.7213
    >>> round(perplexity(2.0), 2)                                  # as unsure as 7.39 choices
    7.39
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor, nn

from course_lib.env import autocast
from course_lib.errors import CourseError


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
        raise CourseError(f"{len(tokens)} tokens hold no window of block_size={block_size}")
    x = tokens[: n * block_size].view(n, block_size)
    y = tokens[1 : n * block_size + 1].view(n, block_size)
    total = 0.0
    for i in range(0, n, batch_size):
        with autocast(device):
            loss = model(x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)).loss
        total += loss.float().item() * len(x[i : i + batch_size])
    model.train(was_training)
    return total / n


def unigram_loss(train_tokens: Tensor, val_tokens: Tensor, vocab_size: int) -> float:
    """Held-out loss (nats per token) of the model that knows only how often each token occurs
    in ``train_tokens`` (N,), add-one smoothed: the baseline every trained model must beat
    (Lesson 05 derives it), scored on ``val_tokens`` (M,)."""
    counts = torch.bincount(train_tokens.long(), minlength=vocab_size).double() + 1
    return -(counts / counts.sum()).log()[val_tokens.long()].mean().item()


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
        raise CourseError(f"n_tokens={n_tokens} and n_chars={n_chars} must both be >= 1")
    return loss_nats_per_token * n_tokens / n_chars / math.log(2)


def perplexity(loss_nats_per_token: float) -> float:
    """exp(loss): the model is as unsure as a uniform choice among this many tokens."""
    return math.exp(loss_nats_per_token)


def matmul_peak(device: torch.device | str = "cpu", reps: int = 5) -> float:
    """The machine's float32 peak in FLOP/s, measured: the best rate of a square matrix multiply
    (n = 1024 and 2048, 2n³ FLOPs each) over ``reps`` tries. MFU (model FLOPs utilisation) is a
    model's FLOPs per second over this (Lesson 05, ``benchmarks/bench_train.py``)."""
    device = torch.device(device)
    best = 0.0
    for n in (1024, 2048):
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        a @ b  # warm-up
        for _ in range(reps):
            _sync(device)
            start = time.perf_counter()
            a @ b
            _sync(device)
            best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
