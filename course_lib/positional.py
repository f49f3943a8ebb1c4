"""Sinusoidal position encodings, as in "Attention Is All You Need" (Vaswani et al., 2017).

Lesson 02 (embeddings and positions) derives this, step by step.

Attention by itself sees a set, not a sequence: shuffle the tokens and each one gets the same
output, shuffled. So the model adds to each token embedding a vector that says where the token
is. Vaswani et al. use fixed waves: position ``pos`` gets, for each pair of dimensions
``(2i, 2i+1)``, ``sin(pos / base^(2i/dim))`` and ``cos(pos / base^(2i/dim))``. The first pair
turns fastest (a wavelength of 2π positions), the last slowest (about 2π·base). Because a
shift by ``k`` positions rotates each (sin, cos) pair by a fixed angle, the dot product of two
encodings depends only on how far apart they are.

Learned positions (GPT-2's choice) need nothing here: they are an ``nn.Embedding(block_size,
n_embd)`` inside the model (Lesson 04), which may also use this table instead.

    >>> from course_lib.positional import sinusoidal_encoding
    >>> pe = sinusoidal_encoding(n_positions=128, dim=16)   # (n_positions, dim)
    >>> pe.shape
    torch.Size([128, 16])
    >>> pe[0, :6]                                           # sin 0 = 0, cos 0 = 1
    tensor([0., 1., 0., 1., 0., 1.])
    >>> # in a model: x = tok_emb(idx) + pe[:T]             # (B, T, C) + (T, C)
"""

from __future__ import annotations

import torch

from course_lib.errors import CourseError


def sinusoidal_encoding(n_positions: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """The (n_positions, dim) float32 table of sinusoidal encodings, one row per position.

    Even dims hold sines, odd dims cosines: ``pe[pos, 2i] = sin(pos / base^(2i/dim))`` and
    ``pe[pos, 2i+1] = cos(pos / base^(2i/dim))``. ``dim`` must be even (a sine needs its cosine).
    """
    if n_positions < 1:
        raise CourseError(
            f"n_positions={n_positions}, expected >= 1: ask for at least one position"
        )
    if dim < 2 or dim % 2:
        raise CourseError(
            f"dim={dim}, expected an even number >= 2: each sine on an even dim is paired with a "
            f"cosine on the next odd dim. Use dim={max(2, dim + dim % 2)}."
        )
    # float64 for the angles: pos * freq reaches n_positions radians, where float32 would lose
    # the 4th decimal of sin/cos; the table itself is float32 like the embeddings it is added to.
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]  # (n_positions, 1)
    freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (dim / 2,)
    angle = pos * freq  # (n_positions, dim / 2)
    pe = torch.empty(n_positions, dim, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle)
    return pe.float()
