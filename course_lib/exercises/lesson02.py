"""Checkers for the exercises of Lesson 02 (notebooks/02_embeddings_and_positions.ipynb).

The right answers come from ``transformers`` (GPT-J's rotary embedding, whose pairs are
neighbours (2i, 2i+1) as in the lesson), ``course_lib.positional`` and a matrix product; each
typical mistake is a small function beside the message that names it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from course_lib.exercises import call_on_copies, checker, expect_tensor, named_mistake
from course_lib.positional import sinusoidal_encoding

# --- Exercise 1: rotary position embedding -----------------------------------------------------


def _sin_cos(positions: Tensor, d: int, width: int | None = None) -> tuple[Tensor, Tensor]:
    """GPT-J's sines and cosines at ``positions``, (T, d / 2) each: pair i turns at
    10000^(-2i / width), ``width`` d unless a mistake changes it."""
    from transformers.models.gptj.modeling_gptj import create_sinusoidal_positions

    width = width or d
    table = create_sinusoidal_positions(int(positions.max()) + 1, width)[positions]  # sin | cos
    return table[:, : d // 2], table[:, width // 2 : width // 2 + d // 2]


def _gptj(x: Tensor, sin: Tensor, cos: Tensor) -> Tensor:
    """x (T, d) turned pair by pair, (2i, 2i+1), by GPT-J's rotary embedding."""
    from transformers.models.gptj.modeling_gptj import apply_rotary_pos_emb

    return apply_rotary_pos_emb(x[None, :, None], sin[None], cos[None])[0, :, 0]  # (B, T, H, d)


def _rope(x: Tensor, positions: Tensor) -> Tensor:
    return _gptj(x, *_sin_cos(positions, x.shape[-1]))


def _the_other_way(x: Tensor, positions: Tensor) -> Tensor:
    sin, cos = _sin_cos(positions, x.shape[-1])
    return _gptj(x, -sin, cos)


def _without_the_factor_2(x: Tensor, positions: Tensor) -> Tensor:
    return _gptj(x, *_sin_cos(positions, x.shape[-1], width=2 * x.shape[-1]))


def _rotate_half(x: Tensor, positions: Tensor) -> Tensor:
    """LLaMA's layout in transformers: dimension i turns with i + d/2."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    sin, cos = (torch.cat([t, t], dim=-1)[None] for t in _sin_cos(positions, x.shape[-1]))
    return apply_rotary_pos_emb(x[None, None], x[None, None], cos, sin)[0][0, 0]


_ROPE_MISTAKES = {
    _the_other_way: "that turns each pair the other way (by -θ): the pair (a, b) becomes "
    "(a cos θ - b sin θ, a sin θ + b cos θ)",
    _without_the_factor_2: "the exponent is missing its factor 2: pair i turns at "
    "10000^(-2i/d), as in the sinusoidal table",
    _rotate_half: "that pairs dimension i with i + d/2 (the 'rotate half' layout of GPT-NeoX and "
    "of Hugging Face's LLaMA): valid, but here the pairs are neighbours (2i, 2i+1), as in "
    "section 3",
    lambda x, p: x + sinusoidal_encoding(int(p.max()) + 1, x.shape[-1])[p]: "that adds the "
    "position's vector: RoPE rotates instead, which keeps every vector's length",
    lambda x, p: _rope(x, torch.arange(len(p))): "that turns row t by the angles of position t: "
    "use the positions given, which need not be 0, 1, 2, ...",
}
_ROPE_CASES = [(torch.arange(6), 8), (torch.tensor([0, 7, 3, 30, 100]), 16), (torch.tensor([5]), 4)]


@checker(
    "rotate_pairs",
    "Each pair of dimensions (2i, 2i+1) of a vector is a point in a plane: turn it about the "
    "origin by the angle that the sinusoidal table gives position p and pair i.",
    "angle = positions[:, None] / 10000 ** (torch.arange(0, d, 2) / d); with a, b = x[:, 0::2], "
    "x[:, 1::2]: the pair becomes (a cos - b sin, a sin + b cos), back in the even and odd dims.",
)
def check_rotate_pairs(fn) -> str | None:
    """Check ``fn(x (T, d), positions (T,)) -> (T, d)``: rotary position embedding (RoPE). Then
    the experiment: a rotated query and key have a dot product that depends only on the distance
    between their positions, which added positions do not give."""
    g = torch.Generator().manual_seed(0)
    for positions, d in _ROPE_CASES:
        x = torch.randn(len(positions), d, generator=g)
        where = f"(x of shape {tuple(x.shape)}, positions {positions.tolist()})"
        got = call_on_copies(fn, x, positions)
        got = expect_tensor(got, x.shape, f"the rotated vectors {where}").detach().float()
        want = _rope(x, positions)
        if not torch.allclose(got, want, atol=1e-4):
            mistake = named_mistake(got, _ROPE_MISTAKES, x, positions, atol=1e-4)
            wrong = f"your output differs from RoPE's by up to {(got - want).abs().max():.3g}"
            return f"{mistake or wrong} {where}"
    q, k = torch.randn(2, 1, 16, generator=g)
    starts = torch.tensor([0, 10, 50, 90])
    rope = [float(call_on_copies(fn, q, s[None]) @ call_on_copies(fn, k, s[None] + 3).T)
            for s in starts]  # fmt: skip
    pe = sinusoidal_encoding(100, 16)
    added = [float((q + pe[s]) @ (k + pe[s + 3]).T) for s in starts]
    print(f"q · k at distance 3, starting at positions {starts.tolist()}:")
    print(f"  rotated (RoPE):    {[round(v, 3) for v in rope]}")
    print(f"  positions added:   {[round(v, 3) for v in added]}")
    if max(rope) - min(rope) > 1e-4 or max(added) - min(added) < 0.1:
        return "the rotated dot products should not depend on where the pair starts"
    return None


# --- Exercise 2: dot products by offset, an experiment -----------------------------------------


def _tables() -> dict[str, Tensor]:
    """Three tables of 64 positions, for the experiment: sinusoidal, summed, learned."""
    pe = sinusoidal_encoding(64, 16)
    g = torch.Generator().manual_seed(0)
    return {
        "sinusoidal (sin, cos)": pe,
        "summed sin + cos": pe[:, 0::2] + pe[:, 1::2],  # (64, 8): one number per pair
        "learned (untrained)": torch.randn(64, 16, generator=g),  # as nn.Embedding starts
    }


@checker(
    "dot_by_offset",
    "Take the table's rows t and t + k for every t that has a partner, and the dot product of "
    "each pair: one number per t.",
    "(pe[:-k] * pe[k:]).sum(-1) for k > 0; (pe * pe).sum(-1) for k = 0.",
)
def check_dot_by_offset(fn) -> str | None:
    """Check the experiment ``fn(pe, k) -> (n_positions - k,)``: the dot products pe[t] · pe[t+k]
    of a position table pe (n_positions, dim), for every t. Passes when they are right on three
    tables, and shows what they reveal: only for the (sin, cos) pairs do they depend on the
    offset k alone, not on t."""
    spread = {}  # table -> the largest std over t of pe[t] · pe[t + k], k = 0..5
    for name, pe in _tables().items():
        spread[name] = 0.0
        for k in range(6):
            want = torch.diagonal(pe @ pe.T, offset=k)  # row t, column t + k
            got = call_on_copies(fn, pe, k)
            got = expect_tensor(got, want.shape, f"one dot product per t (k = {k})")
            if not torch.allclose(got, want, atol=1e-4):
                error = (got - want).abs().max()
                return (
                    f"for k = {k}, {name} table: the dot products differ from pe[t] · pe[t + k] "
                    f"by up to {error:.3g}"
                )
            spread[name] = max(spread[name], got.std().item())
    print(
        "how much pe[t] · pe[t + k] varies with t (largest std over t, k = 0..5): "
        + ", ".join(f"{name}: {s:.2g}" for name, s in spread.items())
        + ". Only the (sin, cos) pairs give dot products that depend on k alone."
    )
    sinusoidal, *others = spread.values()
    if not (sinusoidal < 1e-4 and min(others) > 0.1):  # the lesson's claim, measured
        return "the tables lost their difference: is pe the table the checker passed in?"
    return None
