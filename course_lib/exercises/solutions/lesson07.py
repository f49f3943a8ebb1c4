"""Solutions to the exercises of Lesson 07 (fine-tuning)."""

import math

import torch


def lora_forward(x, W, b, A, B, alpha):
    rank = A.size(0)
    return x @ W.T + b + (alpha / rank) * (x @ A.T) @ B.T


def lora_init(in_features, out_features, rank):
    A = torch.empty(rank, in_features)
    torch.nn.init.kaiming_uniform_(A, a=math.sqrt(5))  # as nn.Linear initialises its weight
    B = torch.zeros(out_features, rank)
    return A, B


def last_token(hidden, lengths):
    return hidden[torch.arange(hidden.size(0)), lengths - 1]


def too_fast(model, poems):
    from course_lib.config import TrainConfig
    from course_lib.train import train

    config = TrainConfig(
        batch_size=16,
        max_steps=100,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=5,
        eval_interval=100,
        eval_steps=4,
        checkpoint_interval=100,
        progress=False,
    )
    train(model, poems, config)
    return model
