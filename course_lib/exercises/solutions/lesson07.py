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
