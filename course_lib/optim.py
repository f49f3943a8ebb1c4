"""The optimizer and its schedule: AdamW with its weight-decay groups, and the learning rate
at each step (a linear warm-up, then a cosine). Lesson 05 (pretraining) derives these;
``course_lib.train`` runs the loop that uses them.

    >>> from course_lib.optim import lr_at
    >>> [round(lr_at(s, 1.0, 0.1, warmup_steps=4, max_steps=12), 3) for s in (0, 3, 8, 12)]
    [0.25, 1.0, 0.55, 0.1]
"""

from __future__ import annotations

import math

import torch
from torch import nn

from course_lib.config import GPTConfig, TrainConfig
from course_lib.errors import CourseError
from course_lib.model import GPT


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
        raise CourseError(f"step={step}, expected >= 0")
    if not 0 <= warmup_steps <= max_steps:
        raise CourseError(
            f"warmup_steps={warmup_steps} must be between 0 and max_steps={max_steps}"
        )
    if not 0 <= min_lr <= max_lr:
        raise CourseError(f"min_lr={min_lr} must be between 0 and max_lr={max_lr}")
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    p = (step - warmup_steps) / (max_steps - warmup_steps)  # 0 -> 1 over the decay
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * p))


def configure_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, with weight decay on the base model's matrices.

    Decay pulls weights towards 0. That regularises the matrices (Linear weights, embeddings:
    2-D), which hold nearly all the parameters; a bias or a LayerNorm gain pulled to 0 just
    shifts or silences a feature. Matrices that a change added (LoRA's A and B, a classifier
    head) are not decayed unless ``config.decay_added``: pulling an adapter towards 0 pulls
    the fine-tuned model back towards the base. Frozen parameters (requires_grad=False) stay
    out. The tied wte/lm_head matrix is one parameter (``parameters()`` lists a shared one once).
    """
    base = _base_names(model)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in params if p.dim() >= 2 and (config.decay_added or n in base)]
    ids = {id(p) for p in decay}
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": [p for _, p in params if id(p) not in ids], "weight_decay": 0.0},
    ]
    # On a GPU the fused kernel updates every tensor in one launch instead of one per tensor.
    fused = bool(params) and all(p.is_cuda for _, p in params)
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, fused=fused)


def _base_names(model: nn.Module) -> set[str]:
    """The parameter names of the model as built, before any change (every name, if unknown)."""
    if not isinstance(getattr(model, "config", None), GPTConfig):
        return {n for n, _ in model.named_parameters()}
    with torch.device("meta"):  # the names alone: no memory, no initialisation
        return {n for n, _ in GPT(model.config).named_parameters()}
