"""Lesson 04's checkers: they accept the solutions, say "not attempted" to the stubs, and name
the typical mistakes."""

import pytest
import torch

from course_lib.exercises import FAILED, NOT_ATTEMPTED, PASSED, hint
from course_lib.exercises import lesson04 as ex04
from course_lib.exercises.solutions import lesson04 as sol04


def stub(*args):
    raise NotImplementedError


# --- Exercise 1: param_count, for any configuration ---------------------------------------------


def test_param_count_accepts_solution_and_shows_what_untying_costs(capsys):
    assert ex04.check_param_count(sol04.param_count).status == PASSED
    out = capsys.readouterr().out
    assert "course model: 873,600 parameters; an untied head adds 262,144 (30%)" in out
    assert "GPT-2 small: 124,439,808 parameters; an untied head adds 38,597,376 (31%)" in out


def test_param_count_stub_is_not_attempted_with_a_nudge_and_code_on_request(capsys):
    result = ex04.check_param_count(stub)
    assert result.status == NOT_ATTEMPTED and "bias" in result.message
    assert "C ->" not in result.message and "config." not in result.message
    hint("lesson04", "param_count")
    assert "c_attn (C -> 3C)" in capsys.readouterr().out


@pytest.mark.parametrize("config", ex04._CONFIGS)
@pytest.mark.parametrize("tied", [True, False])
def test_param_count_solution_matches_the_model(config, tied):
    model = ex04.GPT(config)
    if not tied:
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    assert sol04.param_count(config, tied) == sum(p.numel() for p in model.parameters())


def _section_5_formula(c, tied=True):  # right for GPT-2's choices only
    C = c.n_embd
    return c.vocab_size * C + c.block_size * C + c.n_layer * (12 * C**2 + 13 * C) + 2 * C


def _plus(extra):
    return lambda c, tied=True: sol04.param_count(c, tied) + extra(c, tied)


def _norm_biases(c, tied):
    return 0 if c.bias else (2 * c.n_layer + 1) * c.n_embd


def _linear_biases(c, tied):
    return 0 if c.bias else c.n_layer * 9 * c.n_embd


@pytest.mark.parametrize(("attempt", "feedback"), [
    (_section_5_formula, "an untied head is a second (vocab_size, n_embd) matrix"),
    (lambda c, tied: _section_5_formula(c) + (0 if tied else c.vocab_size * c.n_embd),
     "its n_embd weights; and bias=False removes the biases of every Linear"),
    (_plus(lambda c, tied: c.vocab_size * c.n_embd if tied else 0), "count that matrix once"),
    (_plus(lambda c, tied: 0 if tied else c.vocab_size), "the head has no bias"),
    (_plus(lambda c, tied: c.block_size * c.n_embd if c.positions != "learned" else 0),
     "sinusoidal positions are a fixed table"),
    (_plus(_norm_biases), "removes the LayerNorms' biases too: each keeps only its n_embd weights "
     "(for vocab 100, context 16, 2 layers, 32 wide, bias=False, learned positions, tied head "
     "you said 28,608, the model has 28,448)"),
    (_plus(_linear_biases), "removes the biases of every Linear layer"),
    (_plus(lambda c, tied: 1), "the model has"),
    (lambda c, tied: float(sol04.param_count(c, tied)), "return the count as an int, got float"),
])  # fmt: skip
def test_param_count_names_the_typical_mistakes(attempt, feedback):
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
