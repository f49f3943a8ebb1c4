"""Solutions to the exercises of Lesson 02 (notebooks/02_embeddings_and_positions.ipynb)."""

import torch


def sinusoidal_encoding(n_positions: int, dim: int) -> torch.Tensor:
    pos = torch.arange(n_positions).float()[:, None]  # (n_positions, 1)
    two_i = torch.arange(0, dim, 2).float()  # 0, 2, 4, ...: the even dims
    angle = pos / 10000 ** (two_i / dim)  # (n_positions, dim / 2)
    pe = torch.zeros(n_positions, dim)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle)
    return pe


def dot_by_offset(pe, k):
    return (pe[: len(pe) - k] * pe[k:]).sum(dim=-1)  # row t times row t + k, for every t
