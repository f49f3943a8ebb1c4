"""Checkers for the exercises of Lesson 03 (notebooks/03_attention.ipynb).

The right answers come from ``course_lib.attention``; each typical mistake is a small function
beside the message that names it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
from torch import Tensor

from course_lib.attention import causal_mask, scaled_dot_product_attention
from course_lib.exercises import (
    Feedback,
    NotAttempted,
    call_on_copies,
    checker,
    expect_tensor,
    named_mistake,
)

# --- Exercise 1: debug this attention ----------------------------------------------------------

Weights = Callable[[Tensor, Tensor, Tensor], Tensor]  # (q, k, mask) -> weights (B, T_q, T_k)


def _weights(q: Tensor, k: Tensor, mask: Tensor) -> Tensor:
    """The right weights: course_lib's own attention (its values are not needed here)."""
    return scaled_dot_product_attention(q, k, k, mask)[1]


# Each mistake turns a weights function into the one that makes it. Applied in the order of
# the table (so the first is innermost), they combine into the exercise's broken function.
def _over_the_queries(w: Weights) -> Weights:
    # a softmax down each column is the keys' attention over the queries, transposed
    return lambda q, k, mask: w(k, q, mask.mT).mT


def _leaky_mask(w: Weights) -> Weights:
    return lambda q, k, mask: w(q, k, torch.ones_like(mask).tril(1))  # sees the next token too


def _unscaled(w: Weights) -> Weights:
    return lambda q, k, mask: w(q * q.size(-1) ** 0.5, k, mask)  # undoes the 1/sqrt(d_k)


def _divided_by_d_k(w: Weights) -> Weights:
    return lambda q, k, mask: w(q / q.size(-1) ** 0.5, k, mask)


def _masked_after_the_softmax(w: Weights) -> Weights:
    return lambda q, k, mask: w(q, k, torch.ones_like(mask)) * mask


_BUGS = {  # the three bugs of the function as given
    _over_the_queries: "the weights add up to 1 down each column, over the queries; each "
    "query's weights over the keys, along its row, must add up to 1",
    _leaky_mask: "the mask lets each token see the next one: in training it would copy the "
    "answer and the loss would look far better than the model is; a token may see itself and "
    "its past only",
    _unscaled: "the scores are not scaled: they grow like sqrt(d_k) with the width and the "
    "softmax saturates (section 2)",
}
_WRONG_FIXES = {
    _divided_by_d_k: "the scores are divided by d_k: the scale is 1/sqrt(d_k)",
    _masked_after_the_softmax: "the future is hidden after the softmax: the weights left no "
    "longer add up to 1; hide it before, where a score of -inf becomes a weight of exactly 0",
}


def _with(mistakes: tuple[Callable[[Weights], Weights], ...]) -> Weights:
    w = _weights
    for make in mistakes:
        w = make(w)
    return w


@checker(
    "masked_attention",
    "This is the function as given, with its three bugs. Read it line by line against the five "
    "steps of section 3: scores, scale, mask, softmax, weighted sum. Which line does not do "
    "what its step says?",
    "Three lines to fix: the mask keeps the diagonal and below, tril() and not tril(1); the "
    "softmax runs along each row, over the keys, dim=-1; and the scores need / math.sqrt(d) "
    "with d = q.size(-1).",
)
def check_masked_attention(fn) -> str | None:
    """Check ``fn(q, k, v) -> (B, T, d)``, causal scaled dot-product attention, the learner's
    repair of a function with three bugs: a leaky mask, no scale, the softmax over the queries."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 6, 8, generator=g) * 2 for _ in range(3))  # (B, T, d)
    mask = causal_mask(q.size(1))
    got = call_on_copies(fn, q, k, v)
    if isinstance(got, Tensor) and got.shape == (2, 6, 6):
        return "those are the weights, (B, T, T): the output averages the values with them"
    got = expect_tensor(got, v.shape, "the output, one vector per token like v")
    if torch.isnan(got).any():
        return "NaN in the output: a row hides every key. Is the mask inverted?"
    mistakes = tuple(_BUGS) + tuple(_WRONG_FIXES)
    for n in range(len(mistakes) + 1):  # the fewest mistakes first; none: right
        for made in itertools.combinations(mistakes, n):
            if torch.allclose(got, _with(made)(q, k, mask) @ v, atol=1e-5):
                if set(made) == set(_BUGS):
                    raise NotAttempted
                messages = {**_BUGS, **_WRONG_FIXES}
                return "; and ".join(messages[m] for m in made) or None
    want = _weights(q, k, mask) @ v
    return f"the output differs from causal attention's by up to {(got - want).abs().max():.3g}"


# --- Exercise 2: a sliding window --------------------------------------------------------------


def _window(T: int, w: int) -> Tensor:
    return causal_mask(T).triu(1 - w)  # key j with i - w < j <= i


_WINDOW_MISTAKES = {
    lambda T, w: causal_mask(T).triu(-w): "off by one: the window holds w keys, the token "
    "itself and the w - 1 before it",
    lambda T, w: causal_mask(T).triu(2 - w): "off by one: the window holds w keys, the token "
    "itself and the w - 1 before it, yours one fewer",
    lambda T, w: _window(T, w) | _window(T, w).mT: "the future is visible: a key j > i must "
    "stay hidden too",
    lambda T, w: causal_mask(T).tril(-1).triu(-w): "the token cannot see itself: the window "
    "includes the diagonal",
    lambda T, w: causal_mask(T): "that is the plain causal mask: also hide the keys w or more "
    "positions back",
}


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
        where = f"(T = {T}, w = {w})"
        got = call_on_copies(fn, T, w)
        if isinstance(got, Tensor) and got.shape == (T, T) and got.dtype != torch.bool:
            return f"return a bool mask (True: may attend), got {got.dtype} {where}"
        got = expect_tensor(got, (T, T), f"the mask, one row per query {where}")
        want = _window(T, w)
        if not torch.equal(got, want):
            wrong = f"the mask differs from the window in {(got != want).sum()} places"
            return f"{named_mistake(got, _WINDOW_MISTAKES, T, w) or wrong} {where}"
    return None


# --- Exercise 3: how spread out are the weights? -----------------------------------------------


def _bits(weights: Tensor) -> Tensor:
    """(..., T_q, T_k) -> (..., T_q): each query's entropy in bits; entr(0) is 0."""
    return torch.special.entr(weights).sum(-1) / math.log(2)


_ENTROPY_MISTAKES = {
    lambda w: _bits(w) * math.log(2): "those are nats (natural log): bits take the log to base 2",
    lambda w: -_bits(w): "the entropy is negative: it is minus the sum of w log2 w, each term "
    "of which is at most 0",
    lambda w: torch.special.entr(w).sum(-2) / math.log(2): "summed over the queries, down each "
    "column: each query's row of weights has its own entropy",
    lambda w: torch.special.entr(w).mean(-1) / math.log(2): "averaged over the keys: the "
    "entropy is the sum of the terms",
}


@checker(
    "attention_entropy",
    "Each query's weights are a distribution over the keys: its entropy is the weighted "
    "average of the surprise of each key, in bits, as Lesson 00 measured surprise. A key the "
    "query does not look at (weight 0) adds nothing, even hidden by the mask.",
    "bits = -(w * torch.log2(w)).sum(-1), where the weights of 0 must give 0 rather than "
    "0 * -inf = nan: torch.special.entr(w) is -w ln w with entr(0) = 0, or clamp w before the "
    "log2.",
)
def check_attention_entropy(fn) -> str | None:
    """Check the experiment ``fn(weights (..., T_q, T_k)) -> (..., T_q)``: the entropy of each
    query's attention weights, in bits. Passes when it is right, then measures what the scale
    cannot fix: at d_k = 64, how spread out the scaled weights are as the entries of q and k
    grow from std 0.5 to 4."""
    g = torch.Generator().manual_seed(3)
    for T, d_k, causal in ((6, 8, True), (16, 64, False)):
        q, k = torch.randn(2, T, d_k, generator=g) * 2, torch.randn(2, T, d_k, generator=g) * 2
        weights = _weights(q, k, causal_mask(T) if causal else torch.ones(T, T, dtype=torch.bool))
        where = f"(weights of shape {tuple(weights.shape)}{', causal' if causal else ''})"
        got = expect_tensor(call_on_copies(fn, weights), (2, T), f"one entropy per query {where}")
        if torch.isnan(got).any():
            return (
                f"NaN where a weight is 0, above the diagonal {where}: 0 * log 0 counts as 0 (the "
                f"limit of w log w), but the computer's log 0 is -inf and 0 * -inf is NaN"
            )
        if not torch.allclose(got, _bits(weights), atol=1e-4):
            mistake = named_mistake(got, _ENTROPY_MISTAKES, weights, atol=1e-4)
            return f"{mistake or 'the entropies differ'} {where}"
    bits = {}  # std of the entries of q and k -> mean entropy of a query's scaled weights
    for std in (0.5, 1, 2, 4):
        q, k = (torch.randn(16, 64, generator=g) * std for _ in range(2))
        bits[std] = call_on_copies(fn, _weights(q, k, torch.ones(16, 16, dtype=torch.bool)))
        bits[std] = bits[std].mean().item()
    print(
        "d_k = 64, 16 keys, scaled: each query's weights hold "
        + ", ".join(f"{b:.1f} bits at std {std}" for std, b in bits.items())
        + " (4 bits: all keys alike; 0: one key only). The scale undoes the width, not the size "
        "of the entries: the scores grow with std², and the softmax saturates again. Some large "
        "models normalize q and k for this reason (QK-norm, Dehghani et al., 2023)."
    )
    spread = list(bits.values())
    if not (spread == sorted(spread, reverse=True) and spread[1] > 3 and spread[-1] < 1):
        raise Feedback("the entropies do not fall as the entries grow: are they in bits?")
    return None
