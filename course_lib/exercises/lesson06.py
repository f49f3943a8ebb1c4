"""Checkers for the exercises of Lesson 06 (notebooks/06_sampling.ipynb).

The right answers come from ``course_lib`` (``sampling``, ``attention``) and, for the rules
``course_lib`` does not have, from ``transformers``' own logits processors. Each typical mistake
is a small function beside the message that names it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from course_lib.attention import causal_mask, scaled_dot_product_attention
from course_lib.exercises import (
    call_on_copies,
    checker,
    describe,
    expect_tensor,
    named_mistake,
    same,
)
from course_lib.sampling import top_p_filter

NEG_INF = float("-inf")


def _logits(seed: int, B: int, V: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, V, generator=g) * 2


# --- Exercise 1: a repetition penalty ----------------------------------------------------------


def _penalized(logits: Tensor, ids: Tensor, penalty: float) -> Tensor:
    """transformers' repetition penalty (CTRL's): every token seen in a row made less likely."""
    from transformers import RepetitionPenaltyLogitsProcessor

    return RepetitionPenaltyLogitsProcessor(penalty)(ids, logits.clone())


def _seen(logits: Tensor, ids: Tensor) -> Tensor:
    return torch.zeros_like(logits, dtype=torch.bool).scatter(-1, ids, True)


def _divides_every_seen_logit(logits: Tensor, ids: Tensor, penalty: float) -> Tensor:
    return torch.where(_seen(logits, ids), logits / penalty, logits)


def _per_occurrence(logits: Tensor, ids: Tensor, penalty: float) -> Tensor:
    counts = torch.zeros_like(logits).scatter_add(-1, ids, torch.ones_like(ids, dtype=torch.float))
    factor = penalty**counts  # (B, V): penalty^(times seen)
    return torch.where(logits < 0, logits * factor, logits / factor)


_PENALTY_MISTAKES = {
    _divides_every_seen_logit: "a token seen before with a negative logit became more likely: "
    "divided by the penalty, its logit moved up, towards 0. Multiply the negative logits by "
    "it, divide the positive ones",
    lambda z, ids, r: z / r: "every logit is divided, seen or not: that is a temperature; only "
    "the tokens in the row's text are penalized",
    _per_occurrence: "a token seen three times is penalized three times: the penalty comes "
    "once per token seen, however often it occurs",
    lambda z, ids, r: _penalized(z, ids.flatten().expand(len(z), -1), r): "a row is penalized "
    "for the tokens of every row: each row is its own text, so only its own ids count",
}


@checker(
    "repetition_penalty",
    "A token that already occurs in a row's text gets a smaller chance: move its logit down by "
    "the penalty. What does dividing do to a logit below zero? The tokens not seen keep their "
    "logits.",
    "seen = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, ids, True); penalized = "
    "torch.where(logits > 0, logits / penalty, logits * penalty); return torch.where(seen, "
    "penalized, logits).",
)
def check_repetition_penalty(fn) -> str | None:
    """Check ``fn(logits (B, V), ids (B, T), penalty) -> (B, V)``: the logits of the tokens in
    each row's ids made less likely by the penalty (Keskar et al., 2019), against transformers'
    ``RepetitionPenaltyLogitsProcessor``."""
    g = torch.Generator().manual_seed(6)
    for B, V, T, penalty in ((3, 12, 8, 1.5), (2, 30, 20, 1.2)):
        logits = torch.randn(B, V, generator=g) * 2
        ids = torch.randint(V // 2, (B, T), generator=g)  # repeats, and tokens never seen
        where = f"(for logits {(B, V)}, ids {(B, T)} and the penalty {penalty})"
        got = call_on_copies(fn, logits, ids, penalty)
        got = expect_tensor(got, logits.shape, f"the logits, all of them {where}")
        want = _penalized(logits, ids, penalty)
        if not same(got, want, atol=1e-5):
            mistake = named_mistake(got, _PENALTY_MISTAKES, logits, ids, penalty)
            if mistake:
                return f"{mistake} {where}"
            r, t = (~torch.isclose(got, want, atol=1e-5)).nonzero()[0].tolist()
            seen = "seen" if _seen(logits, ids)[r, t] else "not seen"
            return (
                f"row {r}, token {t} ({seen}, logit {logits[r, t]:.4f}) should become "
                f"{want[r, t]:.4f}, yours is {got[r, t]:.4f} {where}"
            )
    return None


# --- The form of a filter's output: logits, -inf where a token is dropped ---------------------


def _filter_problem(got: object, logits: Tensor) -> str | None:
    """What is wrong with the form of ``got``, the learner's filtered ``logits``; None if
    nothing: a tensor of their shape, each token with its own logit or -inf."""
    if isinstance(got, Tensor) and got.dtype == torch.bool:
        return (
            "that is a mask of the tokens: return the logits themselves, -inf where a token is "
            "dropped"
        )
    if not isinstance(got, Tensor) or got.shape != logits.shape:
        return (
            f"return the filtered logits, a tensor of shape {tuple(logits.shape)}, each token "
            f"with its logit or -inf, got {describe(got)}"
        )
    got = got.detach().to(logits.dtype)
    if torch.isfinite(got).all() and torch.allclose(got.sum(-1), torch.ones(()), atol=1e-4):
        return (
            "those are probabilities (each row adds up to 1): return the filtered logits, the "
            "softmax comes later, when the next token is drawn"
        )
    dropped = got != logits
    fill = got[dropped]
    if fill.numel() == 0 or torch.isneginf(fill).all():
        return None
    if (got[..., :-1] >= got[..., 1:]).all():
        return (
            "your result is sorted, most likely first: each position is one token of the "
            "vocabulary, so put the result back in the vocabulary's order"
        )
    if torch.isfinite(fill).all() and (fill == fill[0]).all():
        c = fill[0].item()
        zero = ", and a logit of 0 still gets e^0 = 1 before the sum" if c == 0 else ""
        return (
            f"the dropped tokens are set to {c:g} instead of -inf: only -inf gives them exactly "
            f"0 probability{zero}"
        )
    r, t = (dropped & ~torch.isneginf(got)).nonzero()[0].tolist()
    return (
        f"the tokens you keep must keep their logits and the others become -inf: row {r}, token "
        f"{t} has the logit {logits[r, t].item():.4f}, yours is {got[r, t].item():.4f}"
    )


def _check_filter(fn, cases, want_kept, mistakes) -> str | None:
    """Run the filter ``fn(logits, x)`` on ``cases`` of (where, logits, x, name); compare the
    tokens it keeps with ``want_kept(logits, x)``, naming the mistakes in ``mistakes`` if name."""
    for where, logits, x, name in cases:
        got = call_on_copies(fn, logits, x)
        problem = _filter_problem(got, logits)
        if problem is None and not torch.equal(got > NEG_INF, want := want_kept(logits, x)):
            kept = got > NEG_INF
            problem = named_mistake(kept, mistakes, logits, x) if name else None
            if problem is None:
                r = next(r for r in range(len(kept)) if not torch.equal(kept[r], want[r]))
                kept_r, want_r = (m[r].nonzero().flatten().tolist() for m in (kept, want))
                problem = f"row {r} keeps the tokens {kept_r}, but the rule keeps {want_r}"
        if problem:
            return f"{problem} ({where})"
    return None


# --- Exercise 2: top-p for a batch -------------------------------------------------------------


def _nucleus(logits: Tensor, p: float) -> Tensor:
    """(B, V) bool: the tokens course_lib's top-p keeps."""
    return top_p_filter(logits, p) > NEG_INF


def _in_sorted_order(logits: Tensor, keep, descending: bool = True) -> Tensor:
    """``keep(sorted logits)`` decided in each row's sorted order, put back in vocabulary order."""
    values, order = logits.sort(-1, descending=descending)
    kept = keep(values)
    return kept.scatter(-1, order, kept)


def _before(x: Tensor) -> Tensor:
    return x.cumsum(-1) - x  # what the tokens ranked before each one hold


def _crossing_dropped(logits: Tensor, p: float) -> Tensor:
    kept = _nucleus(logits, p)
    last = logits.masked_fill(~kept, float("inf")).argmin(-1, keepdim=True)  # the crossing token
    return kept.scatter(-1, last, False)


_TOP_P_MISTAKES = {
    _crossing_dropped: "the token that crosses p is dropped: yours keeps only the tokens whose "
    "running sum, themselves included, stays within p, which holds less than p; keep a token "
    "while the tokens before it hold less than p",
    lambda z, p: _nucleus(z, p) & (z.softmax(-1).amax(-1, keepdim=True) <= p): "the most likely "
    "token must always stay: where it alone holds more than p, yours keeps no token at all",
    lambda z, p: torch.arange(z.size(-1)) < _nucleus(z, p).sum(-1, keepdim=True): "the mask is "
    "still in sorted order: put it back in the vocabulary's order before filling, else it drops "
    "the wrong tokens",
    lambda z, p: _before(z.softmax(-1)) < p: "the running sum runs over the vocabulary's order: "
    "sort first, most likely token first, so that the tokens kept are the most likely ones",
    lambda z, p: _in_sorted_order(z, lambda s: _before(s.softmax(-1)) < p, False): "the "
    "probabilities are sorted ascending: sort them descending, so that the running sum starts "
    "at the most likely token",
    lambda z, p: _in_sorted_order(z, lambda s: _before(s) < p): "the running sum is over the "
    "logits: turn the sorted logits into probabilities first, since p is a share of the "
    "probability",
}


def _top_p_cases() -> list[tuple[str, Tensor, float, bool]]:
    """(where, logits, p, name the mistake): random rows, then two by hand, where several
    mistakes keep the same tokens, so that only the tokens kept and wanted are named."""
    cases = []
    for seed, (B, V) in enumerate([(4, 20), (3, 50)]):
        logits = _logits(100 + seed, B, V)
        cases += [
            (f"for logits of shape {(B, V)} and p = {p}", logits, p, True) for p in (0.9, 0.5, 0.1)
        ]
    for probs, p, nucleus in [
        ([0.15, 0.5, 0.05, 0.3], 0.75, "0.5 + 0.3 = 0.8 >= p"),
        ([0.03, 0.02, 0.9, 0.05], 0.5, "the top token alone, 0.9"),
    ]:
        where = f"for logits = log({probs}) and p = {p}, whose nucleus is {nucleus}"
        cases.append((where, torch.tensor([probs]).log(), p, False))
    return cases


@checker(
    "top_p",
    "Rank each row's tokens from the likeliest down and keep them until they hold p; the rest "
    "become -inf. Work in the sorted order, then put the result back in vocabulary order.",
    "Sort the logits descending (torch.sort), softmax and cumsum them; drop a token when the "
    "tokens before it already hold p (cumsum - probs >= p), scatter that mask back to the "
    "vocabulary order and masked_fill the logits with float('-inf').",
)
def check_top_p(fn) -> str | None:
    """Check ``fn(logits (B, V), p) -> (B, V)``: all but the nucleus of each row set to -inf."""
    if fn is top_p_filter:
        return (
            "that is course_lib's own top_p_filter: it passes, of course, but the exercise is to "
            "write it yourself. Try your version, then compare it with top_p_filter"
        )
    return _check_filter(fn, _top_p_cases(), _nucleus, _TOP_P_MISTAKES)


# --- Exercise 3: min-p, and how many tokens it keeps beside top-p -----------------------------


def _min_p_kept(logits: Tensor, p_base: float) -> Tensor:
    """(B, V) bool: the tokens transformers' min-p keeps."""
    from transformers import MinPLogitsWarper

    return MinPLogitsWarper(p_base)(None, logits) > NEG_INF


_MIN_P_MISTAKES = {  # the strict one first: at p_base = 1 it keeps nothing, as others do
    lambda z, r: z.softmax(-1) > r * z.softmax(-1).amax(-1, keepdim=True): "at p_base = 1 no "
    "token is kept: the likeliest one sits exactly at the threshold and must stay (keep a "
    "probability equal to the threshold)",
    lambda z, r: z.softmax(-1) >= r: "that is a fixed threshold, the same for every row: "
    "min-p scales it by the probability of the row's likeliest token",
    lambda z, r: z >= r * z.amax(-1, keepdim=True): "the threshold is applied to the logits: "
    "compare probabilities (a logit is a log-probability plus a constant)",
    lambda z, r: z.softmax(-1) >= r * z.softmax(-1).amax(0, keepdim=True): "the likeliest "
    "probability is taken over the batch, dim 0: each row has its own likeliest token",
}


def _min_p_cases() -> list[tuple[str, Tensor, float, bool]]:
    logits = _logits(7, 4, 30)
    where = "for logits of shape (4, 30) and p_base ="
    return [(f"{where} {r}", logits, r, True) for r in (0.1, 0.3, 1.0)]


def _sizes(kept: Tensor) -> str:
    sizes = kept.sum(-1)
    return f"{sizes.min()} to {sizes.max()} tokens (median {sizes.median()})"


@checker(
    "min_p",
    "Keep a token when its probability is at least p_base times that of the row's likeliest "
    "token; the others become -inf. Then the checker counts, at every position of the "
    "passage, how many tokens your rule keeps and how many top-p keeps.",
    "probs = logits.softmax(-1); drop = probs < p_base * probs.amax(-1, keepdim=True); "
    "return logits.masked_fill(drop, float('-inf')).",
)
def check_min_p(fn, logits: Tensor | None = None) -> str | None:
    """Check ``fn(logits (B, V), p_base) -> (B, V)``: min-p (Nguyen et al., 2024), every token
    less likely than p_base times the row's likeliest set to -inf, against transformers'
    ``MinPLogitsWarper``. Then, given the model's ``logits`` (T, V) over a passage, compare how
    many tokens min-p 0.1 and top-p 0.9 keep at each position."""
    problem = _check_filter(fn, _min_p_cases(), _min_p_kept, _MIN_P_MISTAKES)
    if problem or logits is None:
        return problem
    if logits.dim() != 2:
        return f"give the passage's logits, (T, V), one row a position, got {describe(logits)}"
    mine = call_on_copies(fn, logits, 0.1) > NEG_INF
    nucleus = _nucleus(logits, 0.9)
    t = logits.softmax(-1).amax(-1).argmin().item()  # where the model is least sure
    held = logits[t].softmax(-1)[mine[t]].sum().item()
    print(
        f"over {len(logits)} positions: min-p 0.1 keeps {_sizes(mine)}, top-p 0.9 keeps "
        f"{_sizes(nucleus)}. Where the model is least sure (position {t}), min-p keeps "
        f"{mine[t].sum()} tokens holding {held:.0%} of the probability, top-p {nucleus[t].sum()} "
        f"to reach 90%: min-p cuts the long tail that top-p must take in."
    )
    fewer = (mine.sum(-1) <= nucleus.sum(-1)).float().mean()
    if not (fewer > 0.9 and 3 * mine.sum(-1).median() < nucleus.sum(-1).median()):
        return "min-p does not keep fewer tokens than top-p here: are these a passage's logits?"
    return None


# --- Exercise 4: several new tokens through the KV cache ---------------------------------------


def _attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    return scaled_dot_product_attention(q, k, v, mask)[0]


def _joined(k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor) -> tuple[Tensor, Tensor]:
    return torch.cat([k_cache, k], dim=1), torch.cat([v_cache, v], dim=1)  # (B, T + n, d)


def _unscaled(q: Tensor, k: Tensor, v: Tensor, kc: Tensor, vc: Tensor) -> Tensor:
    T = kc.size(1)  # the right mask: the last n rows of the causal mask over T + n tokens
    return _attend(q * q.size(-1) ** 0.5, *_joined(k, v, kc, vc), causal_mask(T + q.size(1))[T:])


def _top_left(q: Tensor, k: Tensor, v: Tensor, kc: Tensor, vc: Tensor) -> Tensor:
    n = q.size(1)
    return _attend(q, *_joined(k, v, kc, vc), causal_mask(kc.size(1) + n)[:n])


_CHUNK_MISTAKES = {
    _unscaled: "the scores are not scaled: divide q·k by sqrt(d)",
    lambda q, k, v, kc, vc: _attend(
        q, *_joined(k, v, kc, vc)
    ): "a new token attended to the new tokens after it: with several new tokens a "
    "mask is needed again; new token i may see the T cached keys and the new ones up to itself",
    _top_left: "your mask is the top-left corner of the causal mask: new token i saw only keys "
    "0..i, but it sits at position T + i and sees keys 0..T + i, the bottom-right rows. "
    "(is_causal=True in torch's scaled_dot_product_attention draws the top-left one when there "
    "are fewer queries than keys)",
    lambda q, k, v, kc, vc: _attend(q, kc, vc): "the new tokens attended only to the cache: "
    "append their keys and values first, each token sees itself and the new tokens before it "
    "too",
}


@checker(
    "cached_attention_chunk",
    "Append the new keys and values to the cache first. Then each new token attends to all "
    "the cached tokens and to the new ones up to itself, never to those after it: a causal "
    "mask again, but which rows of it?",
    "K = torch.cat([k_cache, k], dim=1) (and V the same); scores = q @ K.transpose(1, 2) / "
    "sqrt(d), shape (B, n, T + n); new token i sits at T + i and sees keys 0..T + i: "
    "torch.ones(n, T + n, dtype=torch.bool).tril(T); masked_fill the rest with -inf, softmax, "
    "@ V; return out, K, V.",
)
def check_cached_attention_chunk(fn) -> str | None:
    """Check ``fn(q, k, v, k_cache, v_cache) -> (out, k_cache, v_cache)``: one head, n new
    tokens at once. q, k, v (B, n, d) are the new tokens'; the caches (B, T, d) hold the tokens
    before them; out (B, n, d) is their attention output, and the caches come back with their
    k and v appended, (B, T + n, d). The output must equal the last n rows of full causal
    attention over all T + n tokens."""
    g = torch.Generator().manual_seed(6)
    B, T, d = 2, 5, 8
    for n in (3, 1):
        where = f" (for T = {T} cached tokens and n = {n} new ones)"
        Q_all, K_all, V_all = (torch.randn(B, T + n, d, generator=g) for _ in range(3))
        full = _attend(Q_all, K_all, V_all, causal_mask(T + n))
        inputs = Q_all[:, T:], K_all[:, T:], V_all[:, T:], K_all[:, :T], V_all[:, :T]
        got = call_on_copies(fn, *inputs)
        if not isinstance(got, tuple) or len(got) != 3:
            return f"return (out, k_cache, v_cache), got {type(got).__name__}{where}"
        out = expect_tensor(got[0], (B, n, d), f"out, one vector per new token{where}")
        for name, cache, want in (("k_cache", got[1], K_all), ("v_cache", got[2], V_all)):
            if not (isinstance(cache, Tensor) and torch.equal(cache, want)):
                shape = tuple(want.shape)
                return f"{name} must come back with the new tokens' appended, {shape}{where}"
        if not torch.allclose(out, full[:, T:], atol=1e-5):
            gap = (out - full[:, T:]).abs().max()
            wrong = f"out differs from the last n rows of full causal attention by up to {gap:.4f}"
            return (named_mistake(out, _CHUNK_MISTAKES, *inputs) or wrong) + where
    return None
