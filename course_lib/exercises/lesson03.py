"""Checkers for the exercises of Lesson 03 (notebooks/03_attention.ipynb)."""

from __future__ import annotations

import math

import torch

from course_lib.attention import causal_mask, scaled_dot_product_attention
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


@checker(
    "masked_attention",
    "Score every query against every key, scale the scores, hide the future (a token sees only "
    "itself and its past), turn the scores into weights that add up to 1, and average the "
    "values with them.",
    _HINT,
)
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


@checker(
    "window_mask",
    "Start from the causal mask (no future), then also hide, in each row, the keys more than "
    "w - 1 positions back: the token itself and the w - 1 before it stay.",
    "i = torch.arange(T)[:, None] and j = torch.arange(T)[None, :] broadcast to (T, T); the "
    "mask is (j <= i) & (i - j < w).",
)
def check_window_mask(fn) -> str | None:
    """Check ``fn(T, w) -> (T, T) bool``: sliding-window causal attention's mask, True where
    query i may see key j: j <= i and i - j < w."""
    for T, w in ((6, 3), (6, 1), (5, 10)):
        i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
        want = (j <= i) & (i - j < w)
        got = call(fn, T, w)
        where = f"(T = {T}, w = {w})"
        if not isinstance(got, torch.Tensor) or got.shape != (T, T):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            return f"return a (T, T) mask, one row per query, got {shape} {where}"
        if got.dtype != torch.bool:
            return f"return a bool mask (True: may attend), got {got.dtype} {where}"
        if torch.equal(got, want):
            continue
        mistakes = {
            "off by one: the window holds w keys, the token itself and the w - 1 before it":
                (j <= i) & (i - j <= w),
            "the future is visible: a key j > i must stay hidden too": (i - j).abs() < w,
            "the token cannot see itself: the window includes the diagonal":
                (j < i) & (i - j <= w),
            "that is the plain causal mask: also hide the keys w or more positions back":
                j <= i,
        }  # fmt: skip
        for message, wrong in mistakes.items():
            if torch.equal(got, wrong):
                return f"{message} {where}"
        return f"the mask differs from the window in {(got != want).sum()} places {where}"
    return None


@checker(
    "attention_weights",
    "Scores are q against every k; with scaled=True divide them by sqrt(d_k) first; the "
    "softmax over the keys turns each query's scores into weights.",
    "w = q @ k.T; if scaled: w = w / math.sqrt(q.size(-1)); return w.softmax(dim=-1).",
)
def check_attention_weights(fn) -> str | None:
    """Check the experiment ``fn(q, k, scaled) -> (T, T)``: attention weights (no mask) of
    q, k (T, d_k), with or without the 1/sqrt(d_k) scale. Passes when they are right, then
    measures what the scale cannot fix: at d_k = 64, how spread out the scaled weights are, in
    bits of entropy, as the entries of q and k grow from std 0.5 to 4."""
    g = torch.Generator().manual_seed(3)
    for d_k in (4, 256):
        q, k = torch.randn(16, d_k, generator=g), torch.randn(16, d_k, generator=g)
        for scaled in (True, False):
            want = (q @ k.T / (math.sqrt(d_k) if scaled else 1)).softmax(-1)
            got = call(fn, q.clone(), k.clone(), scaled)
            if not isinstance(got, torch.Tensor) or got.shape != want.shape:
                return f"return the (T, T) = {tuple(want.shape)} weights"
            if not torch.allclose(got, want, atol=1e-5):
                return f"the weights differ (d_k = {d_k}, scaled={scaled})"
    bits = {}  # std of the entries of q and k -> mean entropy of a query's scaled weights
    for std in (0.5, 1, 2, 4):
        q, k = torch.randn(16, 64, generator=g) * std, torch.randn(16, 64, generator=g) * std
        w = call(fn, q, k, True)
        bits[std] = -(w * w.clamp_min(1e-30).log2()).sum(-1).mean().item()
    print(
        "d_k = 64, 16 keys, scaled: each query's weights hold "
        + ", ".join(f"{b:.1f} bits at std {std}" for std, b in bits.items())
        + " (4 bits: all keys alike; 0: one key only). The scale undoes the width, not the size "
        "of the entries: the scores grow with std², and the softmax saturates again. Some large "
        "models normalize q and k for this reason (QK-norm, Dehghani et al., 2023)."
    )
    spread = list(bits.values())
    if not (spread == sorted(spread, reverse=True) and spread[1] > 3 and spread[-1] < 1):
        return "the scaled weights do not sharpen as the entries grow: is the scale 1/sqrt(d_k)?"
    return None
