"""The exercises of Lessons 02 and 03. The experiments run the learner's function on inputs the
lesson has not shown, report what they measured, and assert the outcome; every checker accepts
the solution, says "not attempted" to the stub, and names the typical mistakes."""

import math

import pytest
import torch

from course_lib.exercises import FAILED, NOT_ATTEMPTED, PASSED, hint
from course_lib.exercises import lesson02 as ex02
from course_lib.exercises import lesson03 as ex03
from course_lib.exercises.solutions import lesson02 as sol02
from course_lib.exercises.solutions import lesson03 as sol03
from course_lib.positional import sinusoidal_encoding


def stub(*args):
    raise NotImplementedError


# --- Lesson 02, exercise 1: rotary position embedding --------------------------------------------


def _rotated(x, positions, sign=1.0, two=True, halves=False, in_place=False):
    """A learner's RoPE, right or with one slip: turned by -θ, the exponent without its 2, the
    pairs (i, i + d/2), or written into x itself."""
    d = x.shape[-1]
    i = torch.arange(0, d, 2) if two else torch.arange(d // 2)
    angle = positions[:, None].double() / 10000 ** (i.double() / d)  # (T, d / 2)
    cos, sin = angle.cos().float(), sign * angle.sin().float()
    a, b = (x[:, : d // 2], x[:, d // 2 :]) if halves else (x[:, 0::2], x[:, 1::2])
    first, second = a * cos - b * sin, a * sin + b * cos
    turned = torch.cat([first, second], -1) if halves else torch.stack([first, second], -1)
    out = x if in_place else torch.empty_like(x)
    out[:] = turned.flatten(-2) if not halves else turned
    return out


def test_rotate_pairs_accepts_solution_and_a_float64_version():
    assert ex02.check_rotate_pairs(sol02.rotate_pairs).status == PASSED
    assert ex02.check_rotate_pairs(_rotated).passed


def test_rotate_pairs_stub_is_not_attempted_with_a_nudge(capsys):
    result = ex02.check_rotate_pairs(stub)
    assert result.status == NOT_ATTEMPTED and "cos" not in result.message
    hint("lesson02", "rotate_pairs")
    assert "a cos - b sin" in capsys.readouterr().out


@pytest.mark.parametrize(("attempt", "feedback"), [
    (lambda x, p: _rotated(x, p, sign=-1.0), "the other way"),
    (lambda x, p: _rotated(x, p, two=False), "missing its factor 2"),
    (lambda x, p: _rotated(x, p, halves=True), "rotate half"),
    (lambda x, p: x + sinusoidal_encoding(int(p.max()) + 1, x.shape[-1])[p], "adds the position"),
    (lambda x, p: _rotated(x, torch.arange(len(p))), "use the positions given"),
    (lambda x, p: _rotated(x, p, in_place=True), "changed its argument 'x' in place"),
    (lambda x, p: _rotated(x, p)[:, :2], "a tensor of shape (6, 8), got shape (6, 2)"),
    (lambda x, p: _rotated(x, p).numpy(), "got ndarray"),
    (lambda x, p: _rotated(x, p) + 0.1, "differs from RoPE's"),
])  # fmt: skip
def test_rotate_pairs_rejects_typical_mistakes(attempt, feedback):
    result = ex02.check_rotate_pairs(attempt)
    assert result.status == FAILED and feedback in result.message, result.message


# --- Lesson 02, exercise 2: dot products by offset ----------------------------------------------


def test_dot_by_offset_reports_that_only_sinusoidal_pairs_depend_on_the_offset_alone(capsys):
    assert ex02.check_dot_by_offset(sol02.dot_by_offset).status == PASSED
    report = capsys.readouterr().out
    for table in ("sinusoidal (sin, cos)", "summed sin + cos", "learned (untrained)"):
        assert table in report
    assert "Only the (sin, cos) pairs" in report


def test_dot_by_offset_rejects_a_shortcut_that_assumes_the_sinusoidal_property():
    def from_row_zero(pe, k):  # right for the sinusoidal table only: pe[0] · pe[k] for every t
        return torch.full((len(pe) - k,), float(pe[0] @ pe[k]))

    result = ex02.check_dot_by_offset(from_row_zero)
    assert result.status == FAILED and "summed sin + cos table" in result.message, result.message


# --- Lesson 03, exercise 1: debug this attention -------------------------------------------------


def _given(scaled=False, leaky=True, dim=1, divided=False, after=False, inverted=False):
    """Causal attention as the notebook gives it (three bugs), with some fixed or new slips."""

    def attention(q, k, v):
        T, d = q.size(-2), q.size(-1)
        scores = q @ k.transpose(-2, -1)
        if scaled or divided:
            scores = scores / (d if divided else math.sqrt(d))
        mask = torch.ones(T, T, dtype=torch.bool).tril(1 if leaky else 0)
        if inverted:
            mask = ~mask
        if after:
            return scores.softmax(dim=dim) * mask @ v
        return scores.masked_fill(~mask, float("-inf")).softmax(dim=dim) @ v

    return attention


def test_masked_attention_accepts_the_fix_and_says_not_attempted_to_the_function_as_given(capsys):
    assert ex03.check_masked_attention(sol03.masked_attention).status == PASSED
    assert ex03.check_masked_attention(_given(scaled=True, leaky=False, dim=-1)).passed
    for as_given in (stub, _given()):
        result = ex03.check_masked_attention(as_given)
        assert result.status == NOT_ATTEMPTED and "three bugs" in result.message
        assert "tril" not in result.message and "dim" not in result.message
    hint("lesson03", "masked_attention")
    assert "tril()" in capsys.readouterr().out


@pytest.mark.parametrize(("fixes", "left", "fixed"), [
    ({"scaled": True}, ["over the queries", "see the next one"], ["not scaled"]),
    ({"leaky": False}, ["over the queries", "not scaled"], ["see the next one"]),
    ({"dim": -1}, ["see the next one", "not scaled"], ["over the queries"]),
    ({"scaled": True, "leaky": False}, ["over the queries"], ["not scaled", "see the next one"]),
    ({"scaled": True, "dim": -1}, ["see the next one"], ["not scaled", "over the queries"]),
    ({"leaky": False, "dim": -1}, ["not scaled"], ["see the next one", "over the queries"]),
])  # fmt: skip
def test_masked_attention_names_the_bugs_left_and_only_those(fixes, left, fixed):
    result = ex03.check_masked_attention(_given(**fixes))
    assert result.status == FAILED, result
    assert all(bug in result.message for bug in left), result.message
    assert not any(bug in result.message for bug in fixed), result.message


@pytest.mark.parametrize(("attempt", "feedback"), [
    (_given(divided=True, leaky=False, dim=-1), "divided by d_k"),
    (_given(after=True, scaled=True, leaky=False, dim=-1), "hidden after the softmax"),
    (_given(after=True, scaled=True, leaky=False), "must add up to 1; and the future is "
     "hidden after"),
    (_given(inverted=True, scaled=True, leaky=False, dim=-1), "NaN in the output"),
    (lambda q, k, v: (q @ k.mT / 8**0.5).softmax(-1), "those are the weights"),
    (lambda q, k, v: sol03.masked_attention(q, k, v)[0], "got shape (6, 8)"),
    (lambda q, k, v: sol03.masked_attention(q, k, v) + 0.01, "differs from causal attention's"),
])  # fmt: skip
def test_masked_attention_rejects_wrong_fixes(attempt, feedback):
    result = ex03.check_masked_attention(attempt)
    assert result.status == FAILED and feedback in result.message, result.message


# --- Lesson 03, exercise 2: the sliding window ----------------------------------------------------


def _window(rule):
    def mask(T, w):
        i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
        return rule(i, j, w)

    return mask


def test_window_mask_accepts_the_solution_and_says_not_attempted_to_a_stub():
    assert ex03.check_window_mask(sol03.window_mask).passed
    assert ex03.check_window_mask(stub).status == NOT_ATTEMPTED


@pytest.mark.parametrize(("attempt", "feedback"), [
    (_window(lambda i, j, w: (j <= i) & (i - j <= w)), "off by one: the window holds w keys"),
    (_window(lambda i, j, w: (j <= i) & (i - j < w - 1)), "yours one fewer"),
    (_window(lambda i, j, w: (i - j).abs() < w), "the future is visible"),
    (_window(lambda i, j, w: (j < i) & (i - j <= w)), "cannot see itself"),
    (_window(lambda i, j, w: j <= i), "plain causal mask"),
    (_window(lambda i, j, w: (j <= i) & (i - j < w) & (j > 0)), "differs from the window in "
     "3 places (T = 6, w = 3)"),
    (lambda T, w: sol03.window_mask(T, w).float(), "bool mask"),
    (lambda T, w: torch.ones(T), "return the mask, one row per query (T = 6, w = 3), a tensor "
     "of shape (6, 6), got shape (6,)"),
])  # fmt: skip
def test_window_mask_rejects_typical_mistakes(attempt, feedback):
    result = ex03.check_window_mask(attempt)
    assert result.status == FAILED and feedback in result.message, result.message


# --- Lesson 03, exercise 3: the entropy of the weights, and what the scale cannot fix -----------


def test_attention_entropy_reports_that_the_scale_does_not_undo_larger_entries(capsys):
    assert ex03.check_attention_entropy(stub).status == NOT_ATTEMPTED
    assert ex03.check_attention_entropy(sol03.attention_entropy).status == PASSED
    report = capsys.readouterr().out
    assert "bits at std 0.5" in report and "bits at std 4" in report
    assert "not the size of the entries" in report
    from_torch = ex03.check_attention_entropy(
        lambda w: torch.distributions.Categorical(probs=w).entropy() / math.log(2)
    )
    assert from_torch.passed, from_torch


@pytest.mark.parametrize(("attempt", "feedback"), [
    (lambda w: -(w * w.log2()).sum(-1), "NaN where a weight is 0"),
    (lambda w: -(w * w.clamp_min(1e-30).log()).sum(-1), "those are nats"),
    (lambda w: (w * w.clamp_min(1e-30).log2()).sum(-1), "the entropy is negative"),
    (lambda w: -(w * w.clamp_min(1e-30).log2()).sum(-2), "summed over the queries"),
    (lambda w: -(w * w.clamp_min(1e-30).log2()).mean(-1), "averaged over the keys"),
    (lambda w: -(w * w.clamp_min(1e-30).log2()).sum(), "one entropy per query"),
    (lambda w: -(w * w.clamp_min(1e-30).log2()).sum(-1) + 0.1, "the entropies differ "
     "(weights of shape (2, 6, 6), causal)"),
    (lambda w: w.amax(-1) * 4, "the entropies differ"),
])  # fmt: skip
def test_attention_entropy_rejects_typical_mistakes(attempt, feedback):
    result = ex03.check_attention_entropy(attempt)
    assert result.status == FAILED and feedback in result.message, result.message
