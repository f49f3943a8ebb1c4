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


def _interleave(even: torch.Tensor, odd: torch.Tensor) -> torch.Tensor:
    return torch.stack([even, odd], dim=-1).flatten(-2).float()


def _mistakes(n: int, dim: int) -> dict[str, torch.Tensor]:
    sin, cos = _table(n, dim)
    return {
        "sine and cosine are swapped: sine goes on the even dims (0, 2, ...), cosine on the odd":
            _interleave(cos, sin),
        "the exponent is missing its factor 2: the pair (2i, 2i+1) uses base^(2i/dim), "
        "so step i by 2 (torch.arange(0, dim, 2)) or write 2 * i":
            _interleave(*_table(n, dim, two=False)),
        "the base is not 10000: Vaswani et al. use wavelengths up to 10000 · 2π":
            _interleave(*_table(n, dim, base=1000.0)),
        "you added sin and cos of the same angle: keep them in separate dims, the sum "
        "sqrt(2)·sin(θ + π/4) loses the angle":
            _interleave(sin + cos, sin + cos),
        "sines fill the first half and cosines the second: interleave them (even dims sin, "
        "odd dims cos), the layout of the paper and of course_lib":
            torch.cat([sin, cos], dim=-1).float(),
        "the frequencies are inverted: divide the position by base^(2i/dim), don't multiply":
            _interleave(*[f(torch.arange(n, dtype=torch.float64)[:, None]
                            * 10000.0 ** (torch.arange(0, dim, 2).double() / dim))
                          for f in (torch.sin, torch.cos)]),
    }  # fmt: skip


@checker(
    "sinusoidal_encoding",
    "Each pair of dimensions turns at its own speed: compute the angle of every position for "
    "every pair at once; sines go in the even dimensions, cosines in the odd ones.",
    "Build angle = pos / 10000 ** (2i / dim) with torch.arange, then fill pe[:, 0::2] with "
    "sin(angle) and pe[:, 1::2] with cos(angle).",
)
def check_sinusoidal_encoding(fn) -> str | None:
    """Check ``fn(n_positions, dim) -> Tensor (n_positions, dim)``: the sinusoidal table."""
    for n, dim in [(50, 16), (7, 4), (128, 64)]:
        got = call(fn, n, dim)
        if not isinstance(got, torch.Tensor):
            return f"return a torch.Tensor, got {type(got).__name__}"
        if tuple(got.shape) != (n, dim):
            if tuple(got.shape) == (dim, n):
                return f"shape {tuple(got.shape)} is transposed: one row per position, ({n}, {dim})"
            want = f"({n}, {dim})"
            return (
                f"for n_positions={n}, dim={dim} the shape should be {want}, got {tuple(got.shape)}"
            )
        got = got.detach().float()
        if torch.allclose(got, sinusoidal_encoding(n, dim), atol=1e-4):
            continue
        for message, wrong in _mistakes(n, dim).items():
            if torch.allclose(got, wrong, atol=1e-4):
                return message
        bad = (got - sinusoidal_encoding(n, dim)).abs().argmax()
        pos, d = divmod(int(bad), dim)
        want = float(sinusoidal_encoding(n, dim)[pos, d])
        return f"for dim={dim}, pe[{pos}, {d}] should be {want:.4f}, got {float(got[pos, d]):.4f}"
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
