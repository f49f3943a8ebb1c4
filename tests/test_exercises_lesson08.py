"""Lesson 08's checkers: they accept the solutions, say "not attempted" to the stubs, and name
each typical mistake of their tables."""

import copy

import pytest
import torch
import torch.nn.functional as F

from course_lib.exercises import FAILED, NOT_ATTEMPTED, PASSED, hint
from course_lib.exercises import lesson08 as ex08
from course_lib.exercises.solutions import lesson08 as sol08
from course_lib.model import GPT, GPTConfig


def stub(*args):
    raise NotImplementedError


CHECKS = {
    ex08.check_asymmetric_int4: sol08.asymmetric_int4,
    ex08.check_csr_max_nonzeros: sol08.csr_max_nonzeros,
    ex08.check_distill_loss_kl_div: sol08.distill_loss_kl_div,
}


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_checker_accepts_the_solution_and_says_not_attempted_to_the_stub(check, capsys):
    assert check(CHECKS[check]).status == PASSED, check(CHECKS[check])
    result = check(stub)
    assert result.status == NOT_ATTEMPTED and "hint('lesson08'" in result.message
    hint("lesson08", result.exercise)
    code = capsys.readouterr().out.strip()
    assert code and code not in result.message  # the code comes on request only


# --- 1. Asymmetric int4 -----------------------------------------------------------------------


@pytest.mark.parametrize(("mistake", "message"), ex08._ASYMMETRIC_MISTAKES.items())
def test_asymmetric_int4_names_each_mistake_of_its_table(mistake, message):
    result = ex08.check_asymmetric_int4(mistake)
    assert result.status == FAILED and result.message == message


def _no_floor_on_the_scale(w):  # an all-zero row: scale 0, zero point 0 / 0
    lo, hi = w.amin(1).clamp(max=0), w.amax(1).clamp(min=0)
    scale = (hi - lo) / 15
    zero = torch.round(-lo / scale)
    codes = torch.round(w / scale[:, None]) + zero[:, None]
    return codes.clamp(0, 15).to(torch.uint8), scale, zero


def _solution_with(i, change):
    """The solution with item i of its (codes, scale, zero_point) changed."""

    def attempt(w):
        got = list(sol08.asymmetric_int4(w))
        got[i] = change(got[i])
        return tuple(got)

    return attempt


@pytest.mark.parametrize(("attempt", "feedback"), [
    (lambda w: sol08.asymmetric_int4(w)[:2], "return a triple"),
    (_solution_with(0, lambda codes: codes.T), "the codes, one a weight"),
    (_solution_with(1, lambda scale: scale[:, None]), "the scales, one a row"),
    (_solution_with(0, lambda codes: codes.long()), "torch.uint8"),
    (_solution_with(2, lambda zero: zero.float() + 1), "the zero points differ"),
    (_no_floor_on_the_scale, "all-zero row"),
])  # fmt: skip
def test_asymmetric_int4_says_what_is_wrong_with_the_answers_form(attempt, feedback):
    result = ex08.check_asymmetric_int4(attempt)
    assert result.status == FAILED and feedback in result.message, result.message


def test_asymmetric_int4_compares_with_symmetric_and_shows_the_prediction(capsys):
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(2)) * 0.05
    assert ex08.check_asymmetric_int4(sol08.asymmetric_int4, w, "0.9").passed
    out = capsys.readouterr().out
    assert out.startswith("you predicted 0.9; measured: asymmetric's mean error is 0.")
    half = float(out.split("x symmetric's")[1].split(", ")[1].split("x")[0])
    assert 0.4 < half < 0.6  # |w| uses half of the symmetric codes: the step halves


# --- 2. When CSR is smaller -------------------------------------------------------------------


@pytest.mark.parametrize(("mistake", "message"), ex08._CSR_MISTAKES.items())
def test_csr_max_nonzeros_names_each_mistake_of_its_table(mistake, message):
    result = ex08.check_csr_max_nonzeros(mistake)
    assert result.status == FAILED and result.message.startswith(message), result.message


def test_csr_answer_is_where_torchs_sparse_tensor_gets_smaller_than_dense():
    for r, c, ib in ex08.CSR_CASES:
        n, dense = sol08.csr_max_nonzeros(r, c, ib), 4 * r * c
        assert ex08._csr_bytes(r, c, n, ib) < dense <= ex08._csr_bytes(r, c, n + 1, ib)


@pytest.mark.parametrize(("attempt", "feedback"), [
    (lambda r, c, ib: 1 - sol08.csr_max_nonzeros(r, c, ib) / (r * c), "an integer"),
    (lambda r, c, ib: sol08.csr_max_nonzeros(r, c, ib) + 1, "expected"),
])  # fmt: skip
def test_csr_max_nonzeros_rejects_a_fraction_and_an_off_count(attempt, feedback):
    result = ex08.check_csr_max_nonzeros(attempt)
    assert result.status == FAILED and feedback in result.message, result.message


def test_csr_prints_the_break_even_of_c_fc_beside_the_prediction(capsys):
    assert ex08.check_csr_max_nonzeros(sol08.csr_max_nonzeros, "60%").passed
    out = capsys.readouterr().out
    assert "you predicted 60%" in out and "67.2% zeros with int64" in out
    assert "50.4% with int32" in out and "1.52x the dense bytes" in out


# --- 3. Debug this: the distillation loss through kl_div ---------------------------------------


def _notebooks_loss(fixed=()):
    """The function of the notebook, with the bugs in ``fixed`` fixed: none, as given."""

    def loss(student_logits, teacher_logits, T):
        if "roles" in fixed:
            log_x = F.log_softmax(student_logits / T, dim=-1)
            y = F.softmax(teacher_logits / T, dim=-1)
        else:  # as given
            log_x = F.log_softmax(teacher_logits / T, dim=-1)
            y = F.softmax(student_logits / T, dim=-1)
        if "reduction" in fixed:
            log_x, y = (x.reshape(-1, x.size(-1)) for x in (log_x, y))
        return (T**2 if "T" in fixed else T) * F.kl_div(log_x, y, reduction="batchmean")

    return loss


@pytest.mark.parametrize(("fixed", "feedback"), [
    (("reduction", "T"), ["KL(student || teacher)"]),
    (("roles", "T"), ["'batchmean' divides by the first dimension only"]),
    (("roles", "reduction"), ["scaled by T: the factor is T²"]),
    (("T",), ["KL(student || teacher)", "; and 'batchmean'"]),
])  # fmt: skip
def test_kl_div_checker_names_the_bugs_left_in_the_notebooks_function(fixed, feedback):
    result = ex08.check_distill_loss_kl_div(_notebooks_loss(fixed))
    assert result.status == FAILED and all(f in result.message for f in feedback), result.message


def test_kl_div_checker_says_not_attempted_to_the_function_as_given_and_accepts_it_fixed():
    assert ex08.check_distill_loss_kl_div(_notebooks_loss()).status == NOT_ATTEMPTED
    assert ex08.check_distill_loss_kl_div(_notebooks_loss(("roles", "reduction", "T"))).passed


@pytest.mark.parametrize("mistake", [*ex08._KL_BUGS, *ex08._KL_WRONG_FIXES])
def test_kl_div_checker_names_each_mistake_alone(mistake):
    result = ex08.check_distill_loss_kl_div(ex08._with((mistake,)))
    messages = {**ex08._KL_BUGS, **ex08._KL_WRONG_FIXES}
    assert result.status == FAILED and result.message == messages[mistake]


def test_kl_div_checker_wants_one_number():
    result = ex08.check_distill_loss_kl_div(
        lambda s, t, T: sol08.distill_loss_kl_div(s, t, T)[None]
    )
    assert result.status == FAILED and "0-d tensor" in result.message


# --- 4. QLoRA in miniature ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    """A tiny random GPT, and "poems" it can learn from: a sequence of 8 tokens of 64, repeated."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32))
    seq = torch.randint(0, 8, (37,), generator=torch.Generator().manual_seed(0))
    return model, {"train": seq.repeat(60), "val": seq.repeat(10)}


def test_qlora_accepts_the_solution_and_prints_bytes_and_loss(tiny, capsys):
    assert ex08.check_qlora(stub, *tiny).status == NOT_ATTEMPTED
    assert ex08.check_qlora(sol08.qlora, *tiny).passed
    out = capsys.readouterr().out
    assert "2,048 weights trained" in out and "MB of int8 base" in out and "nats/token" in out


def _train(model, poems, lr=2e-3):
    from course_lib.config import TrainConfig
    from course_lib.train import train

    schedule = {"batch_size": 8, "max_steps": 30, "warmup_steps": 3, "eval_steps": 1}
    train(model, poems, TrainConfig(lr=lr, min_lr=lr / 10, progress=False, **schedule))
    return model


def _wrap(model, on_float=False):
    from course_lib.finetune import LoRALinear

    torch.manual_seed(0)
    for name, layer in list(model.projections()):
        if name.endswith("c_attn"):
            base = layer.to_linear() if on_float else layer
            model.set_submodule(name, LoRALinear(base, rank=8, alpha=16.0))
    return model


def _frozen_int8(model):
    from course_lib.compress import quantize_int8

    return quantize_int8(model).requires_grad_(False)


def _lora_on_fp32(model, poems):
    from course_lib.finetune import add_lora

    return _train(add_lora(model, rank=8, alpha=16.0), poems)


QLORA_ATTEMPTS = {
    "no int8 layer": _lora_on_fp32,
    "no LoRA adapter": lambda model, poems: _frozen_int8(model),
    "wraps a float32 layer": lambda model, poems: _train(_wrap(_frozen_int8(model), True), poems),
    "int8 codes differ": lambda model, poems: _train(
        _wrap(_frozen_int8(_train(model, poems))), poems
    ),
    "besides the adapters moved": lambda model, poems: _train(
        _wrap(_frozen_int8(model).requires_grad_(True)), poems
    ),
    "did not train": lambda model, poems: _wrap(_frozen_int8(model)),
    "fell by": lambda model, poems: _train(_wrap(_frozen_int8(model)), poems, lr=1e-6),
}


@pytest.mark.parametrize("feedback", QLORA_ATTEMPTS)
def test_qlora_names_each_mistake_of_its_table(tiny, feedback):
    result = ex08.check_qlora(QLORA_ATTEMPTS[feedback], *tiny)
    assert result.status == FAILED and feedback in result.message, result.message


def test_qlora_leaves_the_model_it_was_given_as_it_was(tiny):
    model, poems = tiny
    before = copy.deepcopy(model.state_dict())
    ex08.check_qlora(sol08.qlora, model, poems)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_qlora_solution_passes_on_the_course_model():
    """The notebook's call: the course model and the poems, the loss falling by QLORA_FALL."""
    from course_lib.course_model import load_or_train
    from course_lib.poems import poem_splits

    course = load_or_train(progress=False)
    fast = course.tokenizer.fast()
    poems = {split: torch.tensor(fast.encode(text).ids) for split, text in poem_splits().items()}
    assert ex08.check_qlora(sol08.qlora, course.model, poems).passed
