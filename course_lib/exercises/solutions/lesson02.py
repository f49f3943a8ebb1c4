"""Solutions to the exercises of Lesson 02 (notebooks/02_embeddings_and_positions.ipynb)."""

import torch


def rotate_pairs(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1]
    two_i = torch.arange(0, d, 2).float()  # 0, 2, 4, ...: one angle per pair, as in section 3
    angle = positions.float()[:, None] / 10000 ** (two_i / d)  # (T, d / 2)
    cos, sin = torch.cos(angle), torch.sin(angle)
    a, b = x[:, 0::2], x[:, 1::2]  # each pair (2i, 2i+1) is a point (a, b) in a plane
    out = torch.empty_like(x)
    out[:, 0::2] = a * cos - b * sin  # turned counter-clockwise by the angle
    out[:, 1::2] = a * sin + b * cos
    return out


def dot_by_offset(pe, k):
    return (pe[: len(pe) - k] * pe[k:]).sum(dim=-1)  # row t times row t + k, for every t
