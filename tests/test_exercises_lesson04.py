"""Lesson 04's checkers: they accept the solutions, say "not attempted" to the stubs, and name
the typical mistakes."""

import dataclasses

import pytest
import torch

from course_lib.exercises import FAILED, NOT_ATTEMPTED, PASSED, hint
from course_lib.exercises import lesson04 as ex04
from course_lib.exercises.solutions import lesson04 as sol04


def stub(*args):
    raise NotImplementedError


# --- Exercise 1: param_count ---------------------------------------------------------------------


def test_param_count_accepts_solution():
    assert ex04.check_param_count(sol04.param_count).status == PASSED


def test_param_count_stub_is_not_attempted():
    assert ex04.check_param_count(stub).status == NOT_ATTEMPTED


def test_param_count_solution_matches_the_model_without_biases():
    config = dataclasses.replace(ex04._CONFIGS[0], bias=False)
    assert sol04.param_count(config) == ex04.GPT(config).num_params()


def _count_untied(c):
    return sol04.param_count(c) + c.vocab_size * c.n_embd


def _count_no_positions(c):
    return sol04.param_count(c) - c.block_size * c.n_embd


def _count_no_norms(c):
    return sol04.param_count(c) - (4 * c.n_layer + 2) * c.n_embd


def _count_no_biases(c):
    return sol04.param_count(c) - c.n_layer * 9 * c.n_embd


def _count_narrow_mlp(c):
    return sol04.param_count(c) - c.n_layer * (6 * c.n_embd**2 + 3 * c.n_embd)


def _count_ignoring_bias_flag(c):
    return sol04.param_count(dataclasses.replace(c, bias=True))


def _count_keeping_norm_biases(c):
    return sol04.param_count(c) + (0 if c.bias else (2 * c.n_layer + 1) * c.n_embd)


@pytest.mark.parametrize(("attempt", "feedback"), [
    (_count_untied, "weight tying"),
    (_count_no_positions, "position embeddings are missing"),
    (_count_no_norms, "LayerNorms are missing"),
    (_count_no_biases, "biases are missing"),
    (_count_narrow_mlp, "4 x n_embd"),
    (_count_ignoring_bias_flag, "removes every bias"),
    (_count_keeping_norm_biases, "LayerNorms' biases too"),
    (lambda c: 42, "the model has"),
])  # fmt: skip
def test_param_count_rejects_typical_mistakes(attempt, feedback):
    result = ex04.check_param_count(attempt)
    assert result.status == FAILED and feedback in result.message, result.message


# --- Exercise 2: parallel_forward ----------------------------------------------------------------


def test_parallel_forward_accepts_solution():
    assert ex04.check_parallel_forward(sol04.parallel_forward).status == PASSED


def test_parallel_forward_stub_is_not_attempted_with_a_nudge_and_code_on_request(capsys):
    result = ex04.check_parallel_forward(stub)
    assert result.status == NOT_ATTEMPTED
    assert "GPT-J" in result.message and "block.attn" not in result.message
    hint("lesson04", "parallel_forward")
    assert "block.ln_1(x)" in capsys.readouterr().out


def _sequential(block, x):
    return block(x)[0]


def _parallel_with_ln_2(block, x):
    return x + block.attn(block.ln_1(x))[0] + block.mlp(block.ln_2(x))


def _parallel_without_residual(block, x):
    n = block.ln_1(x)
    return block.attn(n)[0] + block.mlp(n)


def _parallel_tuple_not_unpacked(block, x):
    n = block.ln_1(x)
    return x + block.attn(n) + block.mlp(n)


def _parallel_without_mlp(block, x):
    return x + block.attn(block.ln_1(x))[0]


def _parallel_unnormalised(block, x):
    return x + block.attn(x)[0] + block.mlp(x)


@pytest.mark.parametrize(("attempt", "feedback"), [
    (_sequential, "sequential block"),
    (_parallel_with_ln_2, "ln_2 is not used"),
    (_parallel_without_residual, "residual is missing"),
    (_parallel_tuple_not_unpacked, "returns a pair"),
    (_parallel_without_mlp, "MLP branch is missing"),
    (_parallel_unnormalised, "unnormalised"),
    (lambda block, x: x[:, :-1], "(B, T, C)"),
    (lambda block, x: 2 * x, "differs"),
])  # fmt: skip
def test_parallel_forward_rejects_typical_mistakes(attempt, feedback):
    result = ex04.check_parallel_forward(attempt)
    assert result.status == FAILED and feedback in result.message, result.message


# --- Exercise 3: no_residual_forward, an experiment ---------------------------------------------


def test_no_residual_accepts_solution_and_reports_the_experiment(capsys):
    assert ex04.check_no_residual(sol04.no_residual_forward).status == PASSED
    assert "without residuals" in capsys.readouterr().out


def test_no_residual_stack_starves_its_first_block_and_blurs_the_positions():
    plain, plain_alike = ex04._stack(sol04.no_residual_forward)
    pre, pre_alike = ex04._stack(lambda block, x: block(x))
    assert plain < pre / 10 and plain_alike > 0.99 and pre_alike < 0.1


def test_no_residual_stub_is_not_attempted():
    assert ex04.check_no_residual(stub).status == NOT_ATTEMPTED


def _attention_residual_kept(block, x):
    x = x + block.attn(block.ln_1(x))[0]
    return block.mlp(block.ln_2(x))


def _mlp_residual_kept(block, x):
    h = block.attn(block.ln_1(x))[0]
    return h + block.mlp(block.ln_2(h))


def _norms_dropped(block, x):
    return block.mlp(block.attn(x)[0])


def _mlp_reads_x(block, x):
    return block.mlp(block.ln_2(x))


def _without_autograd(block, x):
    with torch.no_grad():
        return sol04.no_residual_forward(block, x)


@pytest.mark.parametrize(("attempt", "feedback"), [
    (_sequential, "normal pre-norm block"),
    (_attention_residual_kept, "attention step still adds"),
    (_mlp_residual_kept, "MLP step still adds"),
    (_norms_dropped, "keep the LayerNorms"),
    (_mlp_reads_x, "attention step's output"),
    (_without_autograd, "no gradient reached"),
    (lambda block, x: x, "differs"),
])  # fmt: skip
def test_no_residual_rejects_typical_mistakes(attempt, feedback):
    result = ex04.check_no_residual(attempt)
    assert result.status == FAILED and feedback in result.message, result.message
