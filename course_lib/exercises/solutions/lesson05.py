"""Solutions to the exercises of Lesson 05 (notebooks/05_pretraining.ipynb)."""

import math

import torch


def lr_schedule(
    step: int, max_lr: float, min_lr: float, warmup_steps: int, max_steps: int
) -> float:
    if step < warmup_steps:  # linear warm-up; step 0 is an update too, so it gets max_lr / warmup
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:  # training on past the schedule: stay at the floor
        return min_lr
    p = (step - warmup_steps) / (max_steps - warmup_steps)  # 0 -> 1 over the decay
    return min_lr + (max_lr - min_lr) * (1 + math.cos(math.pi * p)) / 2


def batch_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    log_probs = torch.log_softmax(logits, dim=-1)  # (B, T, V): normalised scores
    picked = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T): log p(target)
    return -picked.mean()  # nats per token


def dropout(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    keep = torch.rand(x.shape, generator=generator) >= p  # True with probability 1 - p
    return x * keep / (1 - p)  # survivors scaled up: the average stays x
