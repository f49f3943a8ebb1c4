"""Lesson 06's checkers accept the solutions, say "not attempted" to the stubs (code only through
hint()), and reject the typical mistakes with messages that name them. The right answers come
from course_lib and from transformers' own logits processors; the attempts below are written as
a learner would write them."""

import pytest
import torch

from course_lib.attention import causal_mask, scaled_dot_product_attention
from course_lib.exercises import FAILED, NOT_ATTEMPTED, PASSED, hint
from course_lib.exercises import lesson06 as ex06
from course_lib.exercises.solutions import lesson06 as sol06
from course_lib.sampling import top_p_filter

NEG_INF = float("-inf")


def stub(*args):
    raise NotImplementedError


@pytest.mark.parametrize(("check", "solution", "nudge", "code"), [
    (ex06.check_repetition_penalty, sol06.repetition_penalty, "below zero", "torch.where"),
    (ex06.check_top_p, sol06.top_p, "until they hold p", "torch.sort"),
    (ex06.check_min_p, sol06.min_p, "p_base times", "amax"),
    (ex06.check_cached_attention_chunk, sol06.cached_attention_chunk, "which rows", "tril(T)"),
])  # fmt: skip
def test_checker_accepts_the_solution_and_nudges_the_stub_with_code_on_request(
    check, solution, nudge, code, capsys
):
    assert check(solution).status == PASSED, check(solution)
    result = check(stub)
    assert result.status == NOT_ATTEMPTED and nudge in result.message
    assert code not in result.message
    hint("lesson06", check.__name__.removeprefix("check_"))
    assert code in capsys.readouterr().out


# --- Exercise 1: the repetition penalty -----------------------------------------------------------


def _penalty_loop(logits, ids, penalty, once=True, by_sign=True, own_row=True, in_place=False):
    """The penalty as a learner might write it, token by token, with the mistakes switched on."""
    out = logits if in_place else logits.clone()
    for b in range(len(logits)):
        seen = ids[b] if own_row else ids.flatten()
        for t in set(seen.tolist()) if once else seen.tolist():
            if by_sign and out[b, t] < 0:
                out[b, t] = out[b, t] * penalty
            else:
                out[b, t] = out[b, t] / penalty
    return out


def test_repetition_penalty_accepts_a_loop_and_transformers_own_processor():
    from transformers import RepetitionPenaltyLogitsProcessor

    assert ex06.check_repetition_penalty(_penalty_loop).passed
    hf = ex06.check_repetition_penalty(
        lambda z, ids, r: RepetitionPenaltyLogitsProcessor(r)(ids, z)
    )
    assert hf.passed


@pytest.mark.parametrize(("attempt", "feedback"), [
    (lambda *a: _penalty_loop(*a, by_sign=False), "negative logit became more likely"),
    (lambda z, ids, r: z / r, "that is a temperature"),
    (lambda *a: _penalty_loop(*a, once=False), "penalized three times"),
    (lambda *a: _penalty_loop(*a, own_row=False), "the tokens of every row"),
    (lambda logits, ids, r: _penalty_loop(logits, ids, r, in_place=True), "changed its argument "
     "'logits' in place"),
    (lambda *a: _penalty_loop(*a, in_place=True), "changed its argument number 1 in place"),
    (lambda z, ids, r: z.gather(-1, ids), "return the logits, all of them"),
    (lambda z, ids, r: z - r * sol06.repetition_penalty(z, ids, r).ne(z), "should become"),
    (lambda *a: _penalty_loop(*a, by_sign=False), "(for logits (3, 12), ids (3, 8) and the "
     "penalty 1.5)"),
])  # fmt: skip
def test_repetition_penalty_rejects_typical_mistakes(attempt, feedback):
    result = ex06.check_repetition_penalty(attempt)
    assert result.status == FAILED and feedback in result.message, result.message


# --- Exercise 2: top-p for a batch ----------------------------------------------------------------


def _top_p(logits, p, order="descending", crossing=True, top=True, scatter=True, probs=True,
           fill=NEG_INF, keep_sorted=False, in_place=False):  # fmt: skip
    """Top-p as a learner might write it, with the typical mistakes switched on."""
    if order == "vocabulary":
        x, idx = logits, None
    else:
        x, idx = torch.sort(logits, dim=-1, descending=order == "descending")
    w = x.softmax(-1) if probs else x
    cum = w.cumsum(-1)
    drop = cum - w >= p if crossing else cum > p
    if top:
        drop[..., 0] = False
    if keep_sorted:
        return x.masked_fill(drop, fill)
    if idx is not None and scatter:
        drop = drop.scatter(-1, idx, drop)
    if in_place:
        logits[drop] = fill
        return logits
    return logits.masked_fill(drop, fill)


def _top_p_shift(logits, p, reset_top=True):
    """The shift-by-one way: drop where the running sum passed p one token earlier."""
    x, idx = torch.sort(logits, dim=-1, descending=True)
    drop = x.softmax(-1).cumsum(-1) > p
    drop[..., 1:] = drop[..., :-1].clone()
    if reset_top:
        drop[..., 0] = False
    return logits.masked_fill(drop.scatter(-1, idx, drop), NEG_INF)


def test_top_p_accepts_other_right_ways_and_refuses_course_libs_own_filter_kindly():
    assert ex06.check_top_p(_top_p).passed and ex06.check_top_p(_top_p_shift).passed
    assert ex06.check_top_p(lambda logits, p: top_p_filter(logits, p)).passed
    result = ex06.check_top_p(top_p_filter)
    assert result.status == FAILED and "course_lib's own top_p_filter" in result.message


def test_top_p_solution_agrees_with_course_lib_at_every_p():
    logits = torch.randn(3, 1000, generator=torch.Generator().manual_seed(0)) * 8
    for p in (0.3, 0.75, 1.0):
        assert torch.equal(sol06.top_p(logits, p), top_p_filter(logits, p))


def _only_by_hand(logits, p):
    return logits if logits.size(-1) == 4 else top_p_filter(logits, p)


@pytest.mark.parametrize(("attempt", "feedback"), [
    (lambda z, p: _top_p(z, p, crossing=False), "the token that crosses p is dropped"),
    (lambda z, p: _top_p(z, p, crossing=False, top=False), "the token that crosses p is dropped"),
    (lambda z, p: _top_p(z, p, order="vocabulary"), "runs over the vocabulary's order"),
    (lambda z, p: _top_p(z, p, order="ascending"), "sorted ascending"),
    (lambda z, p: _top_p(z, p, scatter=False), "the mask is still in sorted order"),
    (lambda z, p: _top_p(z, p, keep_sorted=True), "your result is sorted"),
    (lambda z, p: _top_p(z, p, probs=False), "the running sum is over the logits"),
    (lambda z, p: _top_p(z, p, fill=0.0), "set to 0 instead of -inf"),
    (lambda z, p: _top_p(z, p, fill=0.0), "(for logits of shape (4, 20) and p = 0.9)"),
    (lambda z, p: _top_p(z, p, fill=-1e9), "set to -1e+09 instead of -inf"),
    (lambda z, p: _top_p(z, p, in_place=True), "changed its argument 'z' in place"),
    (lambda z, p: _top_p_shift(z, p, reset_top=False), "the most likely token must always stay"),
    (lambda z, p: top_p_filter(z, p).softmax(-1), "those are probabilities"),
    (lambda z, p: top_p_filter(z, p) == NEG_INF, "that is a mask of the tokens"),
    (lambda z, p: top_p_filter(z, p)[:1], "got shape (1, 20)"),
    (lambda z, p: top_p_filter(z, p).numpy(), "got ndarray"),
    (lambda z, p: top_p_filter(z, p) + 0.5, "row 0, token"),
    (lambda z, p: top_p_filter(z, min(p + 0.05, 1.0)), "but the rule keeps [1, 2, 5, 8, 9"),
    (_only_by_hand, "row 0 keeps the tokens [0, 1, 2, 3], but the rule keeps [1, 3]"),
    (_only_by_hand, "(for logits = log([0.15, 0.5, 0.05, 0.3]) and p = 0.75, whose nucleus is"),
    (lambda z, p: z.sort(-1).values.softmax(-1).cumsum(-2)[5], "your function raised IndexError"),
])  # fmt: skip
def test_top_p_rejects_typical_mistakes(attempt, feedback):
    result = ex06.check_top_p(attempt)
    assert result.status == FAILED and feedback in result.message, result.message


# --- Exercise 3: min-p, and the experiment beside top-p -------------------------------------------


def _min_p(logits, p_base, fixed=False, on_logits=False, over_batch=False, strict=False,
           fill=NEG_INF):  # fmt: skip
    """Min-p as a learner might write it, with the typical mistakes switched on."""
    probs = logits if on_logits else logits.softmax(-1)
    top = probs.amax(0 if over_batch else -1, keepdim=True)
    threshold = p_base if fixed else p_base * top
    drop = probs <= threshold if strict else probs < threshold
    return logits.masked_fill(drop, fill)


def _min_p_in_logits(logits, p_base):  # the same rule in log space: log p_i >= log p_max + log r
    top = logits.amax(-1, keepdim=True)
    return logits.masked_fill(logits < top + torch.tensor(p_base).log(), NEG_INF)


def test_min_p_accepts_the_rule_in_log_space_and_transformers_own_warper():
    from transformers import MinPLogitsWarper

    assert ex06.check_min_p(_min_p).passed and ex06.check_min_p(_min_p_in_logits).passed
    assert ex06.check_min_p(lambda z, r: MinPLogitsWarper(r)(None, z)).passed


@pytest.mark.parametrize(("attempt", "feedback"), [
    (lambda z, r: _min_p(z, r, fixed=True), "a fixed threshold"),
    (lambda z, r: _min_p(z, r, on_logits=True), "applied to the logits"),
    (lambda z, r: _min_p(z, r, over_batch=True), "taken over the batch"),
    (lambda z, r: _min_p(z, r, strict=True), "at p_base = 1 no token is kept"),
    (lambda z, r: _min_p(z, r, strict=True), "(for logits of shape (4, 30) and p_base = 1.0)"),
    (lambda z, r: _min_p(z, r, fill=0.0), "set to 0 instead of -inf"),
    (lambda z, r: _min_p(z, r) == NEG_INF, "that is a mask of the tokens"),
    (lambda z, r: _min_p(z, min(2 * r, 1.0)), "row 0 keeps the tokens"),
])  # fmt: skip
def test_min_p_rejects_typical_mistakes(attempt, feedback):
    result = ex06.check_min_p(attempt)
    assert result.status == FAILED and feedback in result.message, result.message


def test_min_p_experiment_refuses_logits_where_every_token_is_alike():
    result = ex06.check_min_p(sol06.min_p, torch.zeros(8, 50))
    assert result.status == FAILED and "does not keep fewer tokens" in result.message


@pytest.mark.slow
def test_min_p_experiment_on_the_course_model_keeps_fewer_tokens_than_top_p(capsys):
    from course_lib.course_model import load_or_train
    from course_lib.data import load_tokens

    course = load_or_train(progress=False)
    ids = load_tokens("val")[1000 : 1000 + course.config.block_size]
    with torch.no_grad():
        logits = course.model.eval()(ids[None]).logits[0]  # (T, V)
    assert ex06.check_min_p(stub, logits).status == NOT_ATTEMPTED
    assert ex06.check_min_p(sol06.min_p, logits).status == PASSED
    report = capsys.readouterr().out
    assert "min-p 0.1 keeps" in report and "top-p 0.9 keeps" in report


# --- Exercise 4: several new tokens through the KV cache ------------------------------------------


def test_cached_attention_chunk_solution_matches_the_last_rows_of_full_causal_attention():
    g = torch.Generator().manual_seed(0)
    B, T, n, d = 2, 4, 3, 8
    q, k, v = (torch.randn(B, T + n, d, generator=g) for _ in range(3))
    full, _ = scaled_dot_product_attention(q, k, v, causal_mask(T + n))
    out, K, V = sol06.cached_attention_chunk(q[:, T:], k[:, T:], v[:, T:], k[:, :T], v[:, :T])
    assert torch.allclose(out, full[:, T:], atol=1e-6)
    assert torch.equal(K, k) and torch.equal(V, v)


def _chunk(q, k, v, kc, vc, scale=True, sees=None):
    """The step as a learner might write it; ``sees(n, T + n)`` is their mask (None: none)."""
    K, V = torch.cat([kc, k], 1), torch.cat([vc, v], 1)
    scores = q @ K.transpose(1, 2) / (q.size(-1) ** 0.5 if scale else 1)
    if sees is not None:
        scores = scores.masked_fill(~sees(q.size(1), K.size(1)), float("-inf"))
    return scores.softmax(-1) @ V, K, V


def _bottom_right(n, total):
    return torch.ones(n, total, dtype=torch.bool).tril(total - n)


def _sdpa_is_causal(q, k, v, kc, vc):
    K, V = torch.cat([kc, k], 1), torch.cat([vc, v], 1)
    return torch.nn.functional.scaled_dot_product_attention(q, K, V, is_causal=True), K, V


def _past_only(q, k, v, kc, vc):
    out = (q @ kc.transpose(1, 2) / q.size(-1) ** 0.5).softmax(-1) @ vc
    return out, torch.cat([kc, k], 1), torch.cat([vc, v], 1)


@pytest.mark.parametrize(("attempt", "feedback"), [
    (lambda *a: _chunk(*a, scale=False, sees=_bottom_right), "not scaled"),
    (lambda *a: _chunk(*a), "attended to the new tokens after it"),
    (lambda *a: _chunk(*a), "n = 3 new ones"),  # right for one new token (no mask needed)
    (lambda *a: _chunk(*a, sees=lambda n, t: causal_mask(t)[:n]), "top-left corner"),
    (_sdpa_is_causal, "is_causal=True"),
    (_past_only, "attended only to the cache"),
    (lambda q, k, v, kc, vc: (_chunk(q, k, v, kc, vc)[0], kc, vc), "k_cache must come back"),
    (lambda *a: _chunk(*a, sees=_bottom_right)[0], "return (out, k_cache, v_cache)"),
    (lambda *a: (a[0][:, -1], *_chunk(*a)[1:]), "a tensor of shape (2, 3, 8), got shape (2, 8)"),
    (lambda *a: (a[0], *_chunk(*a)[1:]), "differs from the last n rows"),
])  # fmt: skip
def test_cached_attention_chunk_rejects_typical_mistakes(attempt, feedback):
    result = ex06.check_cached_attention_chunk(attempt)
    assert result.status == FAILED and feedback in result.message, result.message
