"""Solutions to the exercises of Lesson 03 (notebooks/03_attention.ipynb)."""

import math

import torch


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    T = q.size(-2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, T, T), scaled: was missing
    mask = torch.ones(T, T, dtype=torch.bool).tril()  # the diagonal and below: was tril(1)
    weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)  # over the keys: was dim=1
    return weights @ v


def window_mask(T: int, w: int) -> torch.Tensor:
    i = torch.arange(T)[:, None]  # (T, 1): the query's position
    j = torch.arange(T)[None, :]  # (1, T): the key's position
    return (j <= i) & (i - j < w)  # the past and the token itself, at most w of them


def attention_entropy(weights: torch.Tensor) -> torch.Tensor:
    logs = weights.clamp_min(1e-30).log2()  # a weight of 0 gives 0 * log2(1e-30) = 0, not NaN
    return -(weights * logs).sum(dim=-1)  # (..., T_q): bits, one entropy per query
