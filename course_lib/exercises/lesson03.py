"""Checkers for the exercises of Lesson 03 (notebooks/03_attention.ipynb)."""

from __future__ import annotations

import math

import torch

from course_lib.attention import causal_mask, merge_heads, scaled_dot_product_attention, split_heads
from course_lib.exercises import call, checker


def _qkv(seed: int = 0, B: int = 2, T: int = 6, d: int = 8) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, T, d, generator=g) * 2 for _ in range(3))


def _attend(q, k, v, scale: float, causal: bool = True, dim: int = -1, after: bool = False):
    scores = q @ k.transpose(-2, -1) * scale
    mask = causal_mask(q.shape[-2])
    if causal and not after:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=dim)
    if after:
        weights = weights * mask
    return weights @ v


def _close(a, b) -> bool:
    return isinstance(a, torch.Tensor) and a.shape == b.shape and torch.allclose(a, b, atol=1e-5)


_HINT = (
    "scores = q @ k.transpose(-2, -1) / sqrt(d_k); hide the future with "
    "masked_fill(~causal_mask(T), float('-inf')); softmax over the last dim; then @ v."
)


@checker("masked_attention", _HINT)
def check_masked_attention(fn) -> str | None:
    """Check ``fn(q, k, v) -> (B, T, d)``: causal scaled dot-product attention's output."""
    q, k, v = _qkv()
    d = q.shape[-1]
    got = call(fn, q.clone(), k.clone(), v.clone())
    want, weights = scaled_dot_product_attention(q, k, v, causal_mask(q.shape[-2]))
    if isinstance(got, tuple):
        got = got[0]
    if not isinstance(got, torch.Tensor):
        return f"return the output tensor (B, T, d), got {type(got).__name__}"
    if _close(got, want):
        return None
    if got.shape == weights.shape and got.shape != want.shape:
        return f"that is the weights {tuple(weights.shape)}: multiply them by v to get the output"
    if got.shape != want.shape:
        return f"the output should have the shape of v, {tuple(want.shape)}, got {tuple(got.shape)}"
    if torch.isnan(got).any():
        return (
            "NaN in the output: is the mask inverted? Hide j > i (above the diagonal), not j <= i"
        )
    mistakes = {
        "no scaling: divide the scores by sqrt(d_k) so the softmax does not saturate":
            _attend(q, k, v, 1.0),
        "you divided by d_k: divide by sqrt(d_k)": _attend(q, k, v, 1 / d),
        "the future is not hidden: apply the causal mask before the softmax":
            _attend(q, k, v, 1 / math.sqrt(d), causal=False),
        "the mask is applied after the softmax: the remaining weights no longer sum to 1; set "
        "the hidden scores to -inf *before* the softmax":
            _attend(q, k, v, 1 / math.sqrt(d), after=True),
        "softmax over the wrong dimension: each query's weights (the last dim, over keys) must sum "
        "to 1, use softmax(dim=-1)": _attend(q, k, v, 1 / math.sqrt(d), dim=-2),
    }  # fmt: skip
    for message, wrong in mistakes.items():
        if _close(got, wrong):
            return message
    return f"output differs from the reference by up to {(got - want).abs().max():.3g}"


@checker("split_heads", "x.view(B, T, n_head, C // n_head), then .transpose(1, 2).")
def check_split_heads(fn) -> str | None:
    """Check ``fn(x, n_head) -> (B, n_head, T, C // n_head)``."""
    x = torch.arange(2 * 5 * 12, dtype=torch.float32).view(2, 5, 12)
    got = call(fn, x, 3)
    want = split_heads(x, 3)
    if _close(got, want):
        return None
    if not isinstance(got, torch.Tensor):
        return f"return a tensor, got {type(got).__name__}"
    if got.shape == (2, 5, 3, 4):
        return "shape (B, T, n_head, hs): transpose(1, 2) so that each head sees the whole sequence"
    if got.shape == want.shape and torch.equal(got, x.view(2, 3, 5, 4)):
        return ("right shape, wrong values: x.view(B, n_head, T, hs) mixes tokens into heads; "
                "view as (B, T, n_head, hs) first, then transpose(1, 2)")  # fmt: skip
    if got.shape != want.shape:
        return (
            f"for x (2, 5, 12), n_head=3 the shape should be (2, 3, 5, 4), got {tuple(got.shape)}"
        )
    return "right shape, wrong values: head h should hold channels h*hs .. (h+1)*hs of every token"


@checker("merge_heads", "y.transpose(1, 2) back to (B, T, n_head, hs), then .reshape(B, T, C).")
def check_merge_heads(fn) -> str | None:
    """Check ``fn(y) -> (B, T, C)``: the inverse of split_heads."""
    x = torch.arange(2 * 5 * 12, dtype=torch.float32).view(2, 5, 12)
    heads = split_heads(x, 3)
    got = call(fn, heads)
    if _close(got, x):
        return None
    if not isinstance(got, torch.Tensor):
        return f"return a tensor, got {type(got).__name__}"
    if got.shape == x.shape and torch.equal(got, heads.reshape(2, 5, 12)):
        return ("right shape, wrong values: reshape without transposing back mixes tokens; "
                "transpose(1, 2) first")  # fmt: skip
    if got.shape != x.shape:
        return f"for heads (2, 3, 5, 4) the shape should be (2, 5, 12), got {tuple(got.shape)}"
    assert torch.equal(merge_heads(heads), x)  # the reference itself round-trips
    return "right shape, wrong values: merge_heads(split_heads(x)) must give x back"
