"""Lesson 06's checkers: they refuse course_lib's own filters passed as an answer, and the
cached-attention exercise (several new tokens at once) accepts the solution, says "not
attempted" to the stub and names the typical mistakes."""

import pytest
import torch

from course_lib.attention import causal_mask, scaled_dot_product_attention
from course_lib.exercises import FAILED, NOT_ATTEMPTED, PASSED, hint
from course_lib.exercises import lesson06 as ex06
from course_lib.exercises.solutions import lesson06 as sol06
from course_lib.sampling import top_k_filter, top_p_filter


def stub(*args):
    raise NotImplementedError


def test_top_k_refuses_course_libs_own_filter_kindly():
    result = ex06.check_top_k(top_k_filter)
    assert result.status == FAILED
    assert "course_lib's own top_k_filter" in result.message and "yourself" in result.message


def test_top_p_refuses_course_libs_own_filter_kindly():
    result = ex06.check_top_p(top_p_filter)
    assert result.status == FAILED
    assert "course_lib's own top_p_filter" in result.message and "yourself" in result.message


def test_top_k_and_top_p_accept_a_learners_wrapper_of_the_same_rule():
    assert ex06.check_top_k(lambda logits, k: top_k_filter(logits, k)).passed
    assert ex06.check_top_p(lambda logits, p: top_p_filter(logits, p)).passed


def test_cached_attention_chunk_solution_matches_the_last_rows_of_full_causal_attention():
    g = torch.Generator().manual_seed(0)
    B, T, n, d = 2, 4, 3, 8
    q, k, v = (torch.randn(B, T + n, d, generator=g) for _ in range(3))
    full, _ = scaled_dot_product_attention(q, k, v, causal_mask(T + n))
    out, K, V = sol06.cached_attention_chunk(q[:, T:], k[:, T:], v[:, T:], k[:, :T], v[:, :T])
    assert torch.allclose(out, full[:, T:], atol=1e-6)
    assert torch.equal(K, k) and torch.equal(V, v)


def test_cached_attention_chunk_accepts_the_solution():
    assert ex06.check_cached_attention_chunk(sol06.cached_attention_chunk).status == PASSED


def test_cached_attention_chunk_stub_is_not_attempted_with_a_nudge_and_code_on_request(capsys):
    result = ex06.check_cached_attention_chunk(stub)
    assert result.status == NOT_ATTEMPTED
    assert "which rows" in result.message and "tril" not in result.message
    hint("lesson06", "cached_attention_chunk")
    assert "tril(T)" in capsys.readouterr().out


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
    (lambda *a: _chunk(*a, sees=lambda n, t: causal_mask(t)[:n]), "top-left corner"),
    (_sdpa_is_causal, "is_causal=True"),
    (_past_only, "attended only to the cache"),
    (lambda q, k, v, kc, vc: (_chunk(q, k, v, kc, vc)[0], kc, vc), "appended"),
    (lambda *a: _chunk(*a, sees=_bottom_right)[0], "return (out, k_cache, v_cache)"),
    (lambda *a: (a[0][:, -1], *_chunk(*a)[1:]), "out must be (B, n, d) = (2, 3, 8)"),
    (lambda *a: (a[0], *_chunk(*a)[1:]), "differs from the last n rows"),
])  # fmt: skip
def test_cached_attention_chunk_rejects_typical_mistakes(attempt, feedback):
    result = ex06.check_cached_attention_chunk(attempt)
    assert result.status == FAILED and feedback in result.message, result.message


def test_cached_attention_chunk_names_the_case_that_fails():
    # right for one new token (no mask needed), wrong for three: the message says which case
    result = ex06.check_cached_attention_chunk(lambda *a: _chunk(*a))
    assert "n = 3 new ones" in result.message
