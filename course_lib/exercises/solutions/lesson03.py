"""Solutions to the exercises of Lesson 03 (notebooks/03_attention.ipynb)."""

import math

import torch


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    T, d_k = q.shape[-2], q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)  # (B, T, T)
    future = torch.ones(T, T, dtype=torch.bool).triu(diagonal=1)  # True above the diagonal
    scores = scores.masked_fill(future, float("-inf"))
    return scores.softmax(dim=-1) @ v


def split_heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    B, T, C = x.shape
    return x.view(B, T, n_head, C // n_head).transpose(1, 2)


def merge_heads(y: torch.Tensor) -> torch.Tensor:
    B, n_head, T, hs = y.shape
    return y.transpose(1, 2).reshape(B, T, n_head * hs)
