"""Lesson 05's checkers: they accept the solutions, say "not attempted" to the stubs and to the
function given with its bugs, and name the typical mistakes."""

import math

import pytest
import torch

from course_lib.exercises import FAILED, NOT_ATTEMPTED, PASSED, hint
from course_lib.exercises import lesson05 as ex05
from course_lib.exercises.solutions import lesson05 as sol05


def stub(*args):
    raise NotImplementedError


# --- Exercise 1: debug this gradient accumulation ------------------------------------------------


def _given(stale=True, undivided=True, clip_each=True, zero_each=False, unclipped=False,
           step_each=False, returns="mean"):  # fmt: skip
    """The function as the notebook gives it (three bugs), with some fixed or new slips."""

    def accumulated_step(model, optimizer, x, y, micro_batches, grad_clip):
        if not stale:
            optimizer.zero_grad()
        losses = []
        for xm, ym in zip(x.chunk(micro_batches), y.chunk(micro_batches)):
            if zero_each:
                optimizer.zero_grad()
            loss = model(xm, ym).loss
            losses.append(loss.item())
            (loss if undivided else loss / micro_batches).backward()
            if clip_each and not unclipped:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            if step_each:
                optimizer.step()
        if not (clip_each or unclipped):
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if not step_each:
            optimizer.step()
        return {"sum": sum(losses), "mean": sum(losses) / len(losses), "last": losses[-1],
                "none": None}[returns]  # fmt: skip

    return accumulated_step


def test_accumulated_step_accepts_the_fix_and_shows_what_adamw_hides(capsys):
    assert ex05.check_accumulated_step(sol05.accumulated_step).status == PASSED
    report = capsys.readouterr().out
    assert "0.0% with AdamW, clipped at 1.0" in report and "300.0% with SGD" in report
    fixed = _given(stale=False, undivided=False, clip_each=False)
    assert ex05.check_accumulated_step(fixed).passed


def test_accumulated_step_says_not_attempted_to_the_function_as_given(capsys):
    for as_given in (stub, _given(returns="sum")):
        result = ex05.check_accumulated_step(as_given)
        assert result.status == NOT_ATTEMPTED and "three bugs" in result.message
        assert "zero_grad" not in result.message and "clip_grad" not in result.message
    hint("lesson05", "accumulated_step")
    assert "(loss / micro_batches).backward()" in capsys.readouterr().out


@pytest.mark.parametrize(("fixes", "left", "fixed"), [
    ({"stale": False}, ["micro_batches times", "partial sum"], ["empties"]),
    ({"undivided": False}, ["empties", "partial sum"], ["micro_batches times"]),
    ({"clip_each": False}, ["empties", "micro_batches times"], ["partial sum"]),
    ({"stale": False, "undivided": False}, ["partial sum"], ["empties", "micro_batches times"]),
    ({"stale": False, "clip_each": False}, ["micro_batches times"], ["empties", "partial sum"]),
    ({"undivided": False, "clip_each": False}, ["empties"], ["micro_batches times", "partial sum"]),
])  # fmt: skip
def test_accumulated_step_names_the_bugs_left_and_only_those(fixes, left, fixed):
    result = ex05.check_accumulated_step(_given(**fixes))
    assert result.status == FAILED, result
    assert all(bug in result.message for bug in left), result.message
    assert not any(bug in result.message for bug in fixed), result.message


_FIXED = {"stale": False, "undivided": False, "clip_each": False}


@pytest.mark.parametrize(("attempt", "feedback"), [
    (_given(**{**_FIXED, "zero_each": True}), "only the last one's reaches the update"),
    (_given(**{**_FIXED, "unclipped": True}), "no longer clipped"),
    (_given(**{**_FIXED, "step_each": True}), "the optimizer stepped 4 times for one batch"),
    (_given(**_FIXED, returns="sum"), "sum of the micro-batches' mean losses"),
    (_given(**_FIXED, returns="last"), "the last micro-batch's only"),
    (_given(**_FIXED, returns="none"), "a float, got NoneType"),
])  # fmt: skip
def test_accumulated_step_names_the_wrong_fixes(attempt, feedback):
    result = ex05.check_accumulated_step(attempt)
    assert result.status == FAILED and feedback in result.message, result.message


# --- Exercise 2: the loss of a batch -------------------------------------------------------------


def _log_probs_at_targets(logits, targets):
    return logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _loss_in_bits(logits, targets):
    return -(logits.log_softmax(-1) / math.log(2)).gather(-1, targets.unsqueeze(-1)).mean()


def _loss_of_raw_logit(logits, targets):
    return -logits.gather(-1, targets.unsqueeze(-1)).mean()


def _loss_of_probability(logits, targets):
    return -logits.softmax(-1).gather(-1, targets.unsqueeze(-1)).mean()


def _loss_of_argmax(logits, targets):
    return -logits.log_softmax(-1).max(-1).values.mean()


def _loss_shifted_again(logits, targets):
    return _log_probs_at_targets(logits[:, :-1], targets[:, 1:]).mean().neg()


def _loss_cross_entropy_3d(logits, targets):
    return torch.nn.functional.cross_entropy(logits, targets)  # classes must be dim 1


def _loss_from_probabilities(logits, targets):  # section 3's one position, for a batch
    return -logits.softmax(-1).gather(-1, targets.unsqueeze(-1)).log().mean()


def _loss_from_exponentials(logits, targets):  # log-sum-exp without the shift
    log_p = logits - logits.exp().sum(-1, keepdim=True).log()
    return -log_p.gather(-1, targets.unsqueeze(-1)).mean()


def test_batch_loss_accepts_solution_cross_entropy_and_float():
    assert ex05.check_batch_loss(sol05.batch_loss).status == PASSED
    ce = torch.nn.functional.cross_entropy
    assert ex05.check_batch_loss(lambda lg, t: ce(lg.view(-1, lg.shape[-1]), t.view(-1))).passed
    assert ex05.check_batch_loss(lambda lg, t: sol05.batch_loss(lg, t).item()).passed


def test_batch_loss_stub_is_not_attempted_with_a_nudge(capsys):
    result = ex05.check_batch_loss(stub)
    assert result.status == NOT_ATTEMPTED
    assert "log" in result.message and "gather" not in result.message
    hint("lesson05", "batch_loss")
    assert ".gather(-1, targets.unsqueeze(-1))" in capsys.readouterr().out


@pytest.mark.parametrize(("attempt", "feedback"), [
    (lambda lg, t: -_log_probs_at_targets(lg, t).sum(), "sum over the tokens"),
    (lambda lg, t: -_log_probs_at_targets(lg, t).sum(-1).mean(), "averaged over the batch"),
    (_loss_in_bits, "in bits"),
    (_loss_in_bits, "(for logits (2, 3, 5)): expected "),
    (_loss_of_raw_logit, "raw logit"),
    (_loss_of_probability, "probability of the target, not its log-probability"),
    (lambda lg, t: _log_probs_at_targets(lg, t).mean(), "minus sign is missing"),
    (_loss_of_argmax, "argmax"),
    (_loss_shifted_again, "shifted again"),
    (_loss_from_probabilities, "a probability below 1e-45 becomes 0"),
    (_loss_from_exponentials, "your loss is inf"),
    (lambda lg, t: -_log_probs_at_targets(lg, t), "every token, shape (2, 3)"),
    (lambda lg, t: -_log_probs_at_targets(lg, t).view(-1), "every token, shape (6,)"),
    (lambda lg, t: -_log_probs_at_targets(lg, t).mean(-1), "got shape (2,)"),
    (lambda lg, t: [sol05.batch_loss(lg, t)], "a tensor of shape (), got list"),
    (lambda lg, t: sol05.batch_loss(lg, t) + 0.01, "nats per token (for logits (2, 3, 5))"),
    (_loss_cross_entropy_3d, "your function raised RuntimeError"),
    (lambda lg, t: torch.log_softmax(lg, -1, out=lg), "changed its argument 'lg' in place"),
])  # fmt: skip
def test_batch_loss_rejects_typical_mistakes(attempt, feedback):
    result = ex05.check_batch_loss(attempt)
    assert result.status == FAILED and feedback in result.message, result.message


# --- Exercise 3: dropout, an experiment ----------------------------------------------------------


def _drop(x, p, g, keep_rate=None, scale=None):
    keep = torch.rand(x.shape, generator=g) < (1 - p if keep_rate is None else keep_rate)
    return x * keep * (1 / (1 - p) if scale is None else scale)


def test_dropout_accepts_solution_and_says_not_attempted_to_the_stub(capsys):
    assert ex05.check_dropout(sol05.dropout).status == PASSED
    assert "mean over 20,000 masks at p = 0.3" in capsys.readouterr().out
    result = ex05.check_dropout(stub)
    assert result.status == NOT_ATTEMPTED and "rescale" in result.message
    assert "torch.rand" not in result.message


def _in_place(x, p, g):
    return x.mul_(torch.rand(x.shape, generator=g) >= p).div_(1 - p)


@pytest.mark.parametrize(("attempt", "feedback"), [
    (lambda x, p, g: _drop(x, p, g, scale=1.0), "not rescaled"),
    (lambda x, p, g: _drop(x, p, g, scale=1 - p), "multiplied by 1 - p"),
    (lambda x, p, g: _drop(x, p, g, keep_rate=p), "not of keeping it"),
    (lambda x, p, g: _drop(x, p, g, keep_rate=0.5), "expected about"),
    (lambda x, p, g: _drop(x, p, g, scale=2.0), "either 0 or x / (1 - p)"),
    (lambda x, p, g: _drop(x, p, g)[0], "a tensor of shape (200, 500), got shape (500,)"),
    (lambda x, p, g: _drop(x, p, g) if p else x + 1, "at p = 0 nothing is dropped"),
    (_in_place, "changed its argument 'x' in place"),
])  # fmt: skip
def test_dropout_rejects_typical_mistakes(attempt, feedback):
    result = ex05.check_dropout(attempt)
    assert result.status == FAILED and feedback in result.message, result.message
