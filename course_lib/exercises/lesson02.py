"""Checkers for the exercises of Lesson 02 (notebooks/02_embeddings_and_positions.ipynb)."""

from __future__ import annotations

import torch

from course_lib.exercises import call, checker
from course_lib.positional import sinusoidal_encoding


def _table(n: int, dim: int, base: float = 10000.0, two: bool = True) -> tuple:
    """(angles, pairs) of the encoding, for building the typical wrong answers."""
    i = torch.arange(0, dim, 2, dtype=torch.float64) if two else torch.arange(dim // 2)
    angle = torch.arange(n, dtype=torch.float64)[:, None] * base ** (-i.double() / dim)
    return torch.sin(angle), torch.cos(angle)


def _rotate(x: torch.Tensor, positions: torch.Tensor, two: bool = True, sign: float = 1.0,
            halves: bool = False) -> torch.Tensor:  # fmt: skip
    """RoPE of x (T, d) at ``positions`` (T,), right or with a typical mistake switched on."""
    d = x.shape[-1]
    i = torch.arange(0, d, 2, dtype=torch.float64) if two else torch.arange(d // 2).double()
    angle = positions.double()[:, None] / 10000.0 ** (i / d)  # (T, d/2)
    cos, sin = angle.cos(), sign * angle.sin()
    x = x.double()
    a, b = (x[:, : d // 2], x[:, d // 2 :]) if halves else (x[:, 0::2], x[:, 1::2])
    first, second = a * cos - b * sin, a * sin + b * cos
    if halves:
        return torch.cat([first, second], dim=-1).float()
    return torch.stack([first, second], dim=-1).flatten(-2).float()


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
        got = call(fn, x.clone(), positions.clone())
        want = _rotate(x, positions)
        where = f"(x of shape {tuple(x.shape)}, positions {positions.tolist()})"
        if not isinstance(got, torch.Tensor) or got.shape != want.shape:
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            return f"return the rotated vectors, shape {tuple(want.shape)}, got {shape} {where}"
        got = got.detach().float()
        if torch.allclose(got, want, atol=1e-4):
            continue
        pe = sinusoidal_encoding(int(positions.max()) + 1, d)[positions]
        mistakes = {
            "that turns each pair the other way (by -θ): the pair (a, b) becomes "
            "(a cos θ - b sin θ, a sin θ + b cos θ)": _rotate(x, positions, sign=-1.0),
            "the exponent is missing its factor 2: pair i turns at 10000^(-2i/d), as in the "
            "sinusoidal table": _rotate(x, positions, two=False),
            "that pairs dimension i with i + d/2 (the 'rotate half' layout of GPT-NeoX and of "
            "Hugging Face's LLaMA): valid, but here the pairs are neighbours (2i, 2i+1), as in "
            "section 3": _rotate(x, positions, halves=True),
            "that adds the position's vector: RoPE rotates instead, which keeps every vector's "
            "length": x + pe,
            "that turns row t by the angles of position t: use the positions given, which need not "
            "be 0, 1, 2, ...": _rotate(x, torch.arange(len(positions))),
        }
        for message, wrong in mistakes.items():
            if torch.allclose(got, wrong, atol=1e-4):
                return f"{message} {where}"
        return f"your output differs from RoPE's by up to {(got - want).abs().max():.3g} {where}"
    q, k = torch.randn(2, 1, 16, generator=g)
    starts = torch.tensor([0, 10, 50, 90])
    rope = [float(call(fn, q, s[None]) @ call(fn, k, s[None] + 3).T) for s in starts]
    pe = sinusoidal_encoding(100, 16)
    added = [float((q + pe[s]) @ (k + pe[s + 3]).T) for s in starts]
    print(f"q · k at distance 3, starting at positions {starts.tolist()}:")
    print(f"  rotated (RoPE):    {[round(v, 3) for v in rope]}")
    print(f"  positions added:   {[round(v, 3) for v in added]}")
    if max(rope) - min(rope) > 1e-4 or max(added) - min(added) < 0.1:
        return "the rotated dot products should not depend on where the pair starts"
    return None


def _tables() -> dict[str, torch.Tensor]:
    """Three tables of 64 positions, for the experiment: sinusoidal, summed, learned."""
    sin, cos = _table(64, 16)
    g = torch.Generator().manual_seed(0)
    return {
        "sinusoidal (sin, cos)": sinusoidal_encoding(64, 16),
        "summed sin + cos": (sin + cos).float(),  # (64, 8): one number per pair, Lesson 02's
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
            want = (pe[: len(pe) - k] * pe[k:]).sum(-1)
            got = call(fn, pe.clone(), k)
            if not isinstance(got, torch.Tensor) or got.shape != want.shape:
                shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
                return f"for k = {k} return ({len(pe) - k},), one dot product per t, got {shape}"
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
