"""Checkers for the exercises of Lesson 06 (notebooks/06_sampling.ipynb)."""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from course_lib.exercises import call, checker
from course_lib.sampling import top_k_filter, top_p_filter


def _logits(seed: int, B: int, V: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, V, generator=g) * 2


def _tokens(mask_row: Tensor) -> list[int]:
    return mask_row.nonzero().flatten().tolist()


_IN_PLACE = (
    "your function changed the logits it was given (in place: masked_fill_, or "
    "logits[...] = ...): return a new tensor, with masked_fill (no underscore) or on "
    "logits.clone(), since the caller still needs the original scores"
)


def _output_problem(got: object, logits: Tensor, given: Tensor) -> tuple[Tensor | None, list[str]]:
    """Look at the learner's output ``got`` for ``logits`` (``given``: what they were passed).

    Returns the tokens it kept (None when that cannot be told) and what is wrong with its
    form: not a tensor, the input changed, probabilities, sorted, a finite fill value.
    """
    if not torch.equal(given, logits):
        return None, [_IN_PLACE]
    if not isinstance(got, Tensor):
        return None, [f"return a tensor, the filtered logits, got {type(got).__name__}"]
    if got.dtype == torch.bool:
        return None, [
            "that is a mask of the tokens: return the logits themselves, with "
            "logits.masked_fill(drop, float('-inf')) where a token is dropped"
        ]
    if got.shape != logits.shape:
        return None, [
            f"return a tensor of the logits' shape {tuple(logits.shape)}, every token with its "
            f"logit or -inf, got shape {tuple(got.shape)}"
        ]
    got = got.detach().to(logits.dtype)
    if torch.isfinite(got).all() and (got >= 0).all() and (got <= 1).all():
        for dim in (-1, 0):
            if torch.allclose(got.sum(dim), torch.ones(()), atol=1e-4):
                return None, [
                    f"those are probabilities (they sum to 1 over dim {dim}): return the "
                    "filtered logits, the same scores with -inf for each dropped token; the "
                    "softmax comes later, when the next token is drawn"
                ]
    dropped = got != logits
    fill = got[dropped]
    if fill.numel() and not torch.isneginf(fill).all():
        if not torch.isfinite(fill).all() or not (fill == fill[0]).all():
            if (got[..., :-1] >= got[..., 1:]).all():
                return None, [
                    "your result is sorted, most likely first: each position is one token of "
                    "the vocabulary, so scatter back to the vocabulary order, or build a mask "
                    "in that order and masked_fill the original logits"
                ]
            r, t = (dropped & ~torch.isneginf(got)).nonzero()[0].tolist()
            return None, [
                f"the tokens you keep must keep their logits and the others become -inf: row "
                f"{r}, token {t} has the logit {logits[r, t].item():.4f}, yours is "
                f"{got[r, t].item():.4f}"
            ]
        c = fill[0].item()
        if c == 0:
            fill_problem = (
                "the dropped tokens are set to 0 instead of -inf: a logit of 0 still gets "
                "probability from the softmax (e^0 = 1); use float('-inf'), which gives exactly 0"
            )
        else:
            fill_problem = (
                f"the dropped tokens are set to {c:g} instead of float('-inf'): only -inf gives "
                "them exactly 0 probability, whatever the other logits are"
            )
        return ~dropped, [fill_problem]
    return ~dropped, []


_OWN = (
    "that is course_lib's own {0}: it passes, of course, but the exercise is to write it "
    "yourself. Try your version, then compare it with {0} on the same logits"
)


def _finish(problems: list[str], where: str) -> str:
    return f"{'; and '.join(problems)} ({where})"


_TOP_K_HINT = (
    "Find the k-th largest logit of each row, torch.topk(logits, min(k, V), dim=-1).values"
    "[..., -1:], and set everything below it to float('-inf') with masked_fill."
)

_TOP_K_MISTAKES = {
    "fewer": (
        "it keeps k - 1 tokens, one too few: keep every token >= the k-th largest (drop "
        "logits < kth, not logits <= kth)"
    ),
    "more": (
        "it keeps k + 1 tokens, one too many: the k-th largest is the last of "
        "torch.topk(logits, k).values, index k - 1, and everything below it goes"
    ),
    "smallest": (
        "it keeps the k smallest logits: keep the k largest (torch.topk picks the largest by "
        "default; don't pass largest=False or sort ascending)"
    ),
    "dim0": (
        "it filters over dim 0, across the batch: each row is one distribution over the "
        "vocabulary, so take the top k over the last dim (dim=-1)"
    ),
}


def _top_k_mask(logits: Tensor, k: int, largest: bool = True, dim: int = -1) -> Tensor:
    """The tokens that the k largest (or smallest) of each row (or column, dim 0) keep."""
    n = max(0, min(k, logits.size(dim)))
    if n == 0:
        return torch.zeros_like(logits, dtype=torch.bool)
    kth = torch.topk(logits, n, dim=dim, largest=largest).values.narrow(dim, n - 1, 1)
    return logits >= kth if largest else logits <= kth


def _top_k_problem(kept: Tensor, logits: Tensor, k: int) -> str:
    """Name the mistake that keeps ``kept`` instead of the k largest of each row."""
    for n_wrong in (1, 2, 3):
        for offset, largest, dim in itertools.product((0, -1, 1), (True, False), (-1, 0)):
            wrong = {
                "fewer": offset == -1,
                "more": offset == 1,
                "smallest": not largest,
                "dim0": dim == 0,
            }
            if sum(wrong.values()) != n_wrong:
                continue
            if torch.equal(kept, _top_k_mask(logits, k + offset, largest, dim)):
                return "; and ".join(_TOP_K_MISTAKES[m] for m, on in wrong.items() if on)
    want = _top_k_mask(logits, k)
    r = next(r for r in range(len(kept)) if not torch.equal(kept[r], want[r]))
    return (
        f"row {r} keeps the tokens {_tokens(kept[r])}, but the {min(k, logits.size(-1))} "
        f"largest logits are those of {_tokens(want[r])}"
    )


@checker(
    "top_k",
    "In each row, find the k-th largest logit: everything below it becomes -inf. What if k is "
    "larger than the vocabulary?",
    _TOP_K_HINT,
)
def check_top_k(fn) -> str | None:
    """Check ``fn(logits (B, V), k) -> (B, V)``: all but the k largest of each row set to -inf."""
    if fn is top_k_filter:
        return _OWN.format("top_k_filter")
    for seed, (B, V, middle) in enumerate([(4, 10, 3), (3, 17, 6)]):
        logits = _logits(seed, B, V)
        for k in (1, middle, V, V + 5):
            where = f"for logits of shape {(B, V)} and k = {k}"
            given = logits.clone()
            try:
                got = call(fn, given, k)
            except (RuntimeError, IndexError, ValueError) as err:
                if k <= V:
                    raise
                return (
                    f"for logits of shape {(B, V)} and k = {k} > V = {V} your function raised "
                    f"{type(err).__name__}: {err}. A k larger than the vocabulary keeps every "
                    f"token: use k = min(k, logits.size(-1)), torch.topk cannot pick more than V"
                )
            if isinstance(got, Tensor) and k < V and tuple(got.shape) in [(B, k), (B, 1)]:
                return (
                    f"{where} your result has shape {tuple(got.shape)}: those are the largest "
                    f"values (torch.topk's values) only; use the k-th largest as the threshold "
                    f"and return all V logits, shape {(B, V)}, the others set to -inf"
                )
            kept, problems = _output_problem(got, logits, given)
            want = top_k_filter(logits, k) != float("-inf")
            if kept is not None and not torch.equal(kept, want):
                problems.append(_top_k_problem(kept, logits, k))
            if problems:
                return _finish(problems, where)
    return None


_TOP_P_HINT = (
    "Sort the logits descending (torch.sort), softmax and cumsum them; drop a token when the "
    "tokens before it already hold p (cumsum - probs >= p), scatter that mask back to the "
    "vocabulary order and masked_fill the logits with float('-inf')."
)

_TOP_P_MISTAKES = {
    "ascending": (
        "the probabilities are sorted ascending: sort descending (torch.sort(logits, dim=-1, "
        "descending=True)), so the running sum starts at the most likely token"
    ),
    "unsorted": (
        "the running sum runs over the vocabulary order: sort first, most likely token first, "
        "so that the tokens kept are the most likely ones"
    ),
    "crossing": (
        "the token that crosses p is dropped: yours keeps only the tokens whose running sum "
        "including themselves is <= p, which holds less than p; keep a token while the tokens "
        "before it hold less than p (cumsum - probs < p)"
    ),
    "top": (
        "the most likely token must always stay: where it alone holds more than p, yours keeps "
        "no token at all (never drop the first of the sorted tokens: drop[..., 0] = False)"
    ),
    "scatter": (
        "the mask is still in sorted order: scatter it back to the vocabulary order "
        "(mask.scatter(-1, order, mask)) before masked_fill, else it drops the wrong tokens"
    ),
    "logits": (
        "the running sum is over the logits: turn the sorted logits into probabilities first "
        "(softmax), since p is a share of the probability"
    ),
}


def _top_p_mask(logits: Tensor, p: float, order: str = "descending", crossing: bool = True,
                top: bool = True, scatter: bool = True, probs: bool = True) -> Tensor:  # fmt: skip
    """The tokens top-p keeps, right or with the typical mistakes switched on."""
    if order == "unsorted":
        x, idx = logits, None
    else:
        x, idx = torch.sort(logits, dim=-1, descending=order == "descending")
    w = x.softmax(dim=-1) if probs else x
    cum = w.cumsum(dim=-1)
    keep = cum - w < p if crossing else cum <= p
    # the top token stays; forgotten, it is kept only where it alone holds no more than p
    keep[..., 0] = True if top else cum[..., 0] <= p
    if idx is not None and scatter:
        keep = torch.zeros_like(keep).scatter(-1, idx, keep)
    return keep


def _top_p_mistake(kept: Tensor, logits: Tensor, p: float) -> str | None:
    """Name the typical mistakes that keep ``kept`` instead of the nucleus of each row."""
    candidates = []
    orders = ("descending", "ascending", "unsorted")
    bools = (True, False)
    for order, crossing, top, scatter, probs in itertools.product(orders, *[bools] * 4):
        if order == "unsorted" and not scatter:
            continue  # nothing was sorted, nothing to scatter back
        wrong = {
            "ascending": order == "ascending",
            "unsorted": order == "unsorted",
            "crossing": not crossing,
            "top": not top,
            "scatter": not scatter,
            "logits": not probs,
        }
        # the fewest mistakes first; a forgotten top token only where it makes a difference
        rank = (sum(wrong.values()), not top)
        candidates.append((rank, wrong, (order, crossing, top, scatter, probs)))
    for _, wrong, args in sorted(candidates, key=lambda c: c[0]):
        if any(wrong.values()) and torch.equal(kept, _top_p_mask(logits, p, *args)):
            return "; and ".join(_TOP_P_MISTAKES[m] for m, on in wrong.items() if on)
    return None


def _top_p_problem(kept: Tensor, logits: Tensor, p: float, name: bool) -> str:
    """What is wrong with ``kept``: the mistake by name (if ``name``), else the tokens."""
    mistake = _top_p_mistake(kept, logits, p) if name else None
    if mistake:
        return mistake
    want = _top_p_mask(logits, p)
    r = next(r for r in range(len(kept)) if not torch.equal(kept[r], want[r]))
    held = logits[r].softmax(-1)[want[r]].sum().item()
    return (
        f"row {r} keeps the tokens {_tokens(kept[r])}, but the nucleus is "
        f"{_tokens(want[r])}: the fewest most likely tokens, which hold {held:.3f} >= p"
    )


# (probabilities, p, the nucleus): the token that crosses p stays; the top token always stays.
_BY_HAND = [
    ([0.15, 0.5, 0.05, 0.3], 0.75, "0.5 + 0.3 = 0.8 >= p"),
    ([0.03, 0.02, 0.9, 0.05], 0.5, "the top token alone, 0.9"),
]


def _top_p_cases() -> list[tuple[str, Tensor, float, bool]]:
    """(where, logits, p, name the mistake): random rows first, then the ones by hand.

    The random rows tell the typical mistakes apart; in the four tokens by hand several of
    them keep the same tokens, so there only the tokens kept and wanted are named.
    """
    cases = []
    for seed, (B, V) in enumerate([(4, 20), (3, 50)]):
        logits = _logits(100 + seed, B, V)
        for p in (0.9, 0.5, 0.1):
            cases.append((f"for logits of shape {(B, V)} and p = {p}", logits, p, True))
    for probs, p, nucleus in _BY_HAND:
        where = f"for logits = log({probs}) and p = {p}, whose nucleus is {nucleus}"
        cases.append((where, torch.tensor([probs]).log(), p, False))
    return cases


@checker(
    "top_p",
    "Rank each row's tokens from the likeliest down and keep them until they hold p; the rest "
    "become -inf. Work in the sorted order, then put the result back in vocabulary order.",
    _TOP_P_HINT,
)
def check_top_p(fn) -> str | None:
    """Check ``fn(logits (B, V), p) -> (B, V)``: all but the nucleus of each row set to -inf."""
    if fn is top_p_filter:
        return _OWN.format("top_p_filter")
    for where, logits, p, name in _top_p_cases():
        given = logits.clone()
        got = call(fn, given, p)
        kept, problems = _output_problem(got, logits, given)
        want = top_p_filter(logits, p) != float("-inf")
        if kept is not None and not torch.equal(kept, want):
            problems.append(_top_p_problem(kept, logits, p, name))
        if problems:
            return _finish(problems, where)
    return None


def _chunk(
    q: Tensor, k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, scale=True, mask="right"
) -> Tensor:
    """The new tokens' attention output, right or with one typical mistake switched on."""
    K = torch.cat([k_cache, k], dim=1)  # (B, T + n, d)
    V = torch.cat([v_cache, v], dim=1)
    n, total = q.size(1), K.size(1)
    scores = q @ K.transpose(1, 2)  # (B, n, T + n)
    if scale:
        scores = scores / q.size(-1) ** 0.5
    # new token i sits at position T + i: the bottom-right rows of the full causal mask
    sees = {
        "right": torch.ones(n, total, dtype=torch.bool).tril(total - n),
        "top-left": torch.ones(n, total, dtype=torch.bool).tril(),
        "none": torch.ones(n, total, dtype=torch.bool),
        "past": torch.arange(total) < total - n,
    }[mask]
    return scores.masked_fill(~sees, float("-inf")).softmax(-1) @ V


_CHUNK_MISTAKES = {
    (False, "right"): "the scores are not scaled: divide q·k by sqrt(d)",
    (True, "none"): (
        "a new token attended to the new tokens after it: with several new tokens a mask is "
        "needed again; new token i may see the T cached keys and the new ones up to itself"
    ),
    (True, "top-left"): (
        "your mask is the top-left corner of the causal mask: new token i saw only keys "
        "0..i, but it sits at position T + i and sees keys 0..T + i, the bottom-right rows. "
        "(is_causal=True in torch's scaled_dot_product_attention draws the top-left one when "
        "there are fewer queries than keys)"
    ),
    (True, "past"): (
        "the new tokens attended only to the cache: append their keys and values first, "
        "each token sees itself and the new tokens before it too"
    ),
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
    from course_lib.attention import causal_mask, scaled_dot_product_attention

    g = torch.Generator().manual_seed(6)
    B, T, d = 2, 5, 8
    for n in (3, 1):
        where = f" (for T = {T} cached tokens and n = {n} new ones)"
        Q_all, K_all, V_all = (torch.randn(B, T + n, d, generator=g) for _ in range(3))
        full, _ = scaled_dot_product_attention(Q_all, K_all, V_all, causal_mask(T + n))
        q, k, v = Q_all[:, T:], K_all[:, T:], V_all[:, T:]
        k_cache, v_cache = K_all[:, :T].clone(), V_all[:, :T].clone()
        got = call(fn, q, k, v, k_cache, v_cache)
        if not isinstance(got, tuple) or len(got) != 3:
            return f"return (out, k_cache, v_cache), got {type(got).__name__}{where}"
        out, K, V = got
        if not isinstance(out, Tensor) or out.shape != (B, n, d):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            return f"out must be (B, n, d) = {(B, n, d)}, one vector per new token, got {shape}"
        if not all(isinstance(c, Tensor) and c.shape == (B, T + n, d) for c in (K, V)):
            want = (B, T + n, d)
            return f"the caches must come back with the new k and v appended: {want}{where}"
        if not (torch.equal(K, K_all) and torch.equal(V, V_all)):
            return f"the returned caches must be the old ones with k and v appended (dim 1){where}"
        if torch.allclose(out, full[:, T:], atol=1e-5):
            continue
        for (scale, mask), message in _CHUNK_MISTAKES.items():
            if torch.allclose(out, _chunk(q, k, v, k_cache, v_cache, scale, mask), atol=1e-5):
                return message + where
        gap = (out - full[:, T:]).abs().max()
        return (
            f"out differs from the last n rows of full causal attention by up to {gap:.4f}{where}"
        )
    return None


@checker(
    "nucleus_sizes",
    "At each position, count how many of the likeliest tokens it takes for their "
    "probabilities to add up to p: that is top-p's nucleus there.",
    "probs = logits.softmax(-1).sort(-1, descending=True).values; the size is the number of "
    "tokens whose cumsum before them is < p: ((probs.cumsum(-1) - probs) < p).sum(-1).",
)
def check_nucleus_sizes(fn) -> str | None:
    """Check the experiment ``fn(logits, p) -> (T,) ints``: the number of tokens top-p keeps
    at each position of logits (T, V). Passes when they are right, then runs it on the course
    model over a held-out passage to show how the nucleus narrows and widens."""
    from course_lib.course_model import load_or_train
    from course_lib.data import load_tokens

    course = load_or_train(progress=False)
    ids = load_tokens("val")[1000 : 1000 + course.config.block_size]
    with torch.no_grad():
        logits = course.model.eval()(ids[None]).logits[0]  # (T, V)
    want = (~torch.isinf(top_p_filter(logits, 0.9))).sum(-1)
    got = call(fn, logits.clone(), 0.9)
    if not isinstance(got, Tensor) or got.shape != want.shape:
        shape = tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__
        return f"return one size per position, {tuple(want.shape)}, got {shape}"
    if not torch.equal(got.long(), want):
        off = (got.long() - want).abs().max()
        return f"the sizes differ from top-p's nucleus by up to {off} tokens at p = 0.9"
    low, mid, high = want.min().item(), want.median().item(), want.max().item()
    print(
        f"nucleus at p = 0.9 over {len(ids)} positions of a held-out play: {low} to {high} "
        f"tokens (median {mid}): narrow where the model is sure, wide where it is not"
    )
    if high < 10 * low:  # the lesson's claim, measured
        return "the nucleus hardly changes size: is p 0.9?"
    return None
