"""Solutions to the exercises of Lesson 03 (notebooks/03_attention.ipynb)."""

import math

import torch


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    T, d_k = q.shape[-2], q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)  # (B, T, T)
    future = torch.ones(T, T, dtype=torch.bool).triu(diagonal=1)  # True above the diagonal
    scores = scores.masked_fill(future, float("-inf"))
    return scores.softmax(dim=-1) @ v


def window_mask(T: int, w: int) -> torch.Tensor:
    i = torch.arange(T)[:, None]  # (T, 1): the query's position
    j = torch.arange(T)[None, :]  # (1, T): the key's position
    return (j <= i) & (i - j < w)  # the past and the token itself, at most w of them


def attention_weights(q: torch.Tensor, k: torch.Tensor, scaled: bool) -> torch.Tensor:
    scores = q @ k.T  # (T, T): every query against every key
    if scaled:
        scores = scores / math.sqrt(q.size(-1))
    return scores.softmax(dim=-1)
