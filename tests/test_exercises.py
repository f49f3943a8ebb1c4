"""Every checker accepts the reference solution, says "not attempted" for the untouched stub,
and rejects the typical mistakes with feedback that names them."""

from collections import Counter

import pytest
import torch

from course_lib.exercises import FAILED, NOT_ATTEMPTED, PASSED, show_solution
from course_lib.exercises import lesson00 as ex00
from course_lib.exercises import lesson01 as ex01
from course_lib.exercises.solutions import lesson00 as sol00
from course_lib.exercises.solutions import lesson01 as sol01


def stub(*args):
    raise NotImplementedError


# --- the pattern itself --------------------------------------------------------------------------


def test_a_crashing_attempt_is_feedback_not_a_traceback():
    def crashes(text):
        return text[10**9]

    result = ex00.check_char_frequencies(crashes)
    assert result.status == FAILED
    assert "your function raised IndexError" in repr(result)


def test_show_solution_prints_the_reference(capsys):
    show_solution("lesson00", "char_frequencies")
    assert "def char_frequencies" in capsys.readouterr().out


# --- lesson 00 -----------------------------------------------------------------------------------


def test_char_frequencies_accepts_solution():
    assert ex00.check_char_frequencies(sol00.char_frequencies).status == PASSED


def test_char_frequencies_accepts_counter():
    assert ex00.check_char_frequencies(lambda t: dict(Counter(t))).passed


def test_char_frequencies_stub_is_not_attempted_with_hint():
    result = ex00.check_char_frequencies(stub)
    assert result.status == NOT_ATTEMPTED
    assert "empty dict" in result.message


@pytest.mark.parametrize(
    ("attempt", "feedback"),
    [
        (lambda t: dict(Counter(t.split())), "counted words"),
        (lambda t: dict(Counter(t.lower())), "lower-cased"),
        (
            lambda t: {c: n for c, n in Counter(t).items() if not c.isspace()},
            "newlines are characters",
        ),
        (lambda t: {c: n / len(t) for c, n in Counter(t).items()}, "not fractions"),
        (lambda t: sorted(Counter(t).items()), "return a dict"),
        (lambda t: {c: n - 1 for c, n in Counter(t).items()}, "occurs"),
    ],
)
def test_char_frequencies_rejects_typical_mistakes(attempt, feedback):
    result = ex00.check_char_frequencies(attempt)
    assert result.status == FAILED
    assert feedback in result.message


def test_validation_fraction_accepts_solution_on_real_corpus(splits):
    assert ex00.check_validation_fraction(sol00.validation_fraction, splits).passed


def test_validation_fraction_stub_is_not_attempted():
    assert ex00.check_validation_fraction(stub).status == NOT_ATTEMPTED


def _chars(works):
    return sum(len(w.text) for w in works.values())


@pytest.mark.parametrize(
    ("attempt", "feedback"),
    [
        (lambda s: 100 * _chars(s.val) / (_chars(s.train) + _chars(s.val)), "percentage"),
        (lambda s: _chars(s.val) / _chars(s.train), "divided val by train"),
        (lambda s: _chars(s.val) / (_chars(s.train) + _chars(s.val) + _chars(s.finetune)), "poems"),
        (lambda s: str(_chars(s.val)), "return a number"),
        (lambda s: 0.5, "expected 0.1"),
    ],
)
def test_validation_fraction_rejects_typical_mistakes(attempt, feedback):
    result = ex00.check_validation_fraction(attempt)
    assert result.status == FAILED
    assert feedback in result.message


# --- lesson 01 -----------------------------------------------------------------------------------


def _encode_reversed(ids, merges):
    from course_lib.tokenizer import merge

    for pair, new_id in reversed(merges.items()):  # the last-learned merge first
        ids = merge(ids, pair, new_id)
    return ids


def _encode_once(ids, merges):
    from course_lib.tokenizer import merge

    learned = [p for p in zip(ids, ids[1:]) if p in merges]
    return (
        merge(ids, min(learned, key=merges.get), merges[min(learned, key=merges.get)])
        if learned
        else list(ids)
    )


def _encode_in_place(ids, merges):
    encoded = sol01.encode_word(ids, merges)
    ids[:] = encoded
    return encoded


def test_decode_accepts_solution():
    assert ex01.check_decode(sol01.decode).status == PASSED


def test_decode_stub_is_not_attempted_with_a_nudge_and_code_on_request(capsys):
    from course_lib.exercises import hint

    result = ex01.check_decode(stub)
    assert result.status == NOT_ATTEMPTED and "errors=" not in result.message
    assert "hint('lesson01', 'decode')" in result.message
    hint("lesson01", "decode")
    assert "errors='replace'" in capsys.readouterr().out


def _decoder(join=True, errors="replace", swap=False, as_bytes=False):
    def decode(ids, merges):
        vocab = {i: bytes([i]) for i in range(256)}
        for (a, b), new_id in merges.items():
            vocab[new_id] = vocab[b] + vocab[a] if swap else vocab[a] + vocab[b]
        if not join:
            return "".join(vocab[i].decode("utf-8", errors=errors) for i in ids)
        data = b"".join(vocab[i] for i in ids)
        return data if as_bytes else data.decode("utf-8", errors=errors)

    return decode


@pytest.mark.parametrize(("attempt", "feedback"), [
    (_decoder(join=False), "decoded each token on its own"),
    (_decoder(errors="strict"), "errors='replace'"),
    (_decoder(errors="ignore"), "broken bytes vanished"),
    (_decoder(as_bytes=True), "returns the bytes"),
    (_decoder(swap=True), "wrong way round"),
    (lambda ids, merges: ids, "return the text, a str, got list"),
    (lambda ids, merges: "", "should decode to"),
])  # fmt: skip
def test_decode_rejects_typical_mistakes(attempt, feedback):
    result = ex01.check_decode(attempt)
    assert result.status == FAILED and feedback in result.message, result.message


def test_encode_word_accepts_solution():
    assert ex01.check_encode_word(sol01.encode_word).status == PASSED


def test_encode_word_stub_is_not_attempted():
    assert ex01.check_encode_word(stub).status == NOT_ATTEMPTED


@pytest.mark.parametrize(("attempt", "feedback"), [
    (_encode_reversed, "last-learned first"),
    (_encode_once, "only one merge was applied"),
    (_encode_in_place, "don't change the ids"),
    (lambda ids, merges: tuple(sol01.encode_word(ids, merges)), "return a list"),
    (lambda ids, merges: list(ids), "should encode to"),
])  # fmt: skip
def test_encode_word_rejects_typical_mistakes(attempt, feedback):
    result = ex01.check_encode_word(attempt)
    assert result.status == FAILED
    assert feedback in result.message


# --- Lesson 07: the LoRA forward, its initialisation, last-token pooling -----------------------


def test_lesson07_checkers_accept_the_solutions_and_say_not_attempted_to_stubs():
    from course_lib.exercises import lesson07 as ex07
    from course_lib.exercises.solutions import lesson07 as sol07

    assert ex07.check_lora_forward(sol07.lora_forward).status == PASSED
    assert ex07.check_lora_init(sol07.lora_init).status == PASSED
    assert ex07.check_last_token(sol07.last_token).status == PASSED
    for check in (ex07.check_lora_forward, ex07.check_lora_init, ex07.check_last_token):
        assert check(stub).status == NOT_ATTEMPTED


def _lora(x, W, b, A, B, alpha, scale=None, base=True, bias=True):
    scale = alpha / A.size(0) if scale is None else scale
    out = (x @ W.T if base else 0) + (b if bias and base else 0)
    return out + scale * (x @ A.T) @ B.T


@pytest.mark.parametrize(("attempt", "feedback"), [
    (lambda x, W, b, A, B, a: _lora(x, W, b, A, B, a, scale=1.0), "not scaled: multiply"),
    (lambda x, W, b, A, B, a: _lora(x, W, b, A, B, a, scale=a), "scaled by alpha alone"),
    (lambda x, W, b, A, B, a: _lora(x, W, b, A, B, a, scale=A.size(0) / a), "upside down"),
    (lambda x, W, b, A, B, a: _lora(x, W, b, A, B, a, base=False), "output W x + b is missing"),
    (lambda x, W, b, A, B, a: _lora(x, W, b, A, B, a, bias=False), "bias b of the frozen"),
    (lambda x, W, b, A, B, a: x @ A.T, "return y of shape (B, T, out)"),
    (lambda x, W, b, A, B, a: _lora(x, W, b, A, B, a) + 0.1, "differs from the LoRA layer"),
])  # fmt: skip
def test_lora_forward_rejects_typical_mistakes(attempt, feedback):
    from course_lib.exercises import lesson07 as ex07

    result = ex07.check_lora_forward(attempt)
    assert result.status == FAILED and feedback in result.message, result.message


@pytest.mark.parametrize(("attempt", "feedback"), [
    (lambda i, o, r: (torch.zeros(r, i), torch.randn(o, r) * 0.01), "A and B are swapped"),
    (lambda i, o, r: (torch.randn(r, i) * 0.01, torch.randn(o, r) * 0.01), "B must start at zero"),
    (lambda i, o, r: (torch.zeros(r, i), torch.zeros(o, r)), "both gradients are zero"),
    (lambda i, o, r: (torch.randn(r, i) * 3, torch.zeros(o, r)), "A is large"),
    (lambda i, o, r: (torch.randn(i, r) * 0.01, torch.zeros(r, o)), "A must be (rank, in)"),
    (lambda i, o, r: torch.zeros(o, r), "return a pair (A, B)"),
])  # fmt: skip
def test_lora_init_rejects_typical_mistakes(attempt, feedback):
    from course_lib.exercises import lesson07 as ex07

    result = ex07.check_lora_init(attempt)
    assert result.status == FAILED and feedback in result.message, result.message


@pytest.mark.parametrize(("attempt", "feedback"), [
    (lambda h, n: h[:, -1], "padding included: a padded row ends earlier"),
    (lambda h, n: h[torch.arange(len(n)), n.clamp(max=h.size(1) - 1)], "off by one"),
    (lambda h, n: h[:, 0], "the first token of each row"),
    (lambda h, n: h.mean(1), "the mean over all positions"),
    (lambda h, n: h[torch.arange(len(n)), n - 1].T, "return (B, C) = (3, 4)"),
])  # fmt: skip
def test_last_token_rejects_typical_mistakes(attempt, feedback):
    from course_lib.exercises import lesson07 as ex07

    result = ex07.check_last_token(attempt)
    assert result.status == FAILED and feedback in result.message, result.message


@pytest.mark.slow
def test_forgetting_experiment_passes_at_ten_times_the_rate_and_explains_what_else_it_sees():
    from course_lib.config import TrainConfig
    from course_lib.exercises import lesson07 as ex07
    from course_lib.exercises.solutions import lesson07 as sol07
    from course_lib.finetune import add_lora
    from course_lib.train import train

    assert ex07.check_forgetting(stub).status == NOT_ATTEMPTED
    assert ex07.check_forgetting(sol07.too_fast).status == PASSED

    def gently(model, poems):  # Section 2's learning rate: it forgets too little to pass
        config = TrainConfig(batch_size=16, max_steps=100, lr=3e-4, min_lr=3e-5,
                             warmup_steps=5, eval_interval=100, progress=False)  # fmt: skip
        train(model, poems, config)
        return model

    for attempt, feedback in [
        (gently, "was the learning rate 3e-3"),
        (lambda model, poems: model, "did not move"),
        (lambda model, poems: add_lora(model, rank=2, alpha=4.0), "has LoRA adapters"),
        (lambda model, poems: None, "return the fine-tuned model (a GPT), got NoneType"),
    ]:
        result = ex07.check_forgetting(attempt)
        assert result.status == FAILED and feedback in result.message, result.message


def test_stub_messages_are_nudges_and_code_level_hints_come_on_request(capsys):
    """No stub message gives code away; hint(lesson, exercise) prints it, for every checker
    that has one, and names the way out for one that has none."""
    import importlib

    from course_lib import exercises
    from course_lib.exercises import hint

    for n in range(10):
        importlib.import_module(f"course_lib.exercises.lesson{n:02d}")
    assert len(exercises._CODE_HINTS) >= 11
    for (lesson, exercise), code in exercises._CODE_HINTS.items():
        hint(lesson, exercise)
        assert capsys.readouterr().out.strip() == code
    for code_like in ("torch.", ".view(", ".transpose(", "masked_fill", "zip("):
        assert not any(code_like in text for text in _stub_messages()), (
            f"a stub message shows code ({code_like})"
        )
    with pytest.raises(ValueError, match="show_solution"):
        hint("lesson00", "char_frequencies")


def _stub_messages() -> list[str]:
    import importlib
    import inspect

    messages = []
    for n in range(10):
        module = importlib.import_module(f"course_lib.exercises.lesson{n:02d}")
        for name, check in inspect.getmembers(module, inspect.isfunction):
            if name.startswith("check_") and check.__module__ == module.__name__:
                if "forgetting" in name or "qlora" in name:
                    continue  # experiments: their stub is caught before any training
                messages.append(check(stub).message)
    assert len(messages) >= 20  # every lesson's checkers, experiments aside
    return messages


# --- experiments of Lessons 00-02 (03 and 06: their own files): each runs and asserts it -------


def test_experiment_checkers_accept_the_solutions_and_say_not_attempted_to_stubs():
    from course_lib.exercises import lesson00, lesson01, lesson02
    from course_lib.exercises.solutions import lesson00 as s00
    from course_lib.exercises.solutions import lesson01 as s01
    from course_lib.exercises.solutions import lesson02 as s02

    checks = {
        lesson00.check_bigram: s00.bigram,
        lesson01.check_less_text: s01.less_text,
        lesson02.check_dot_by_offset: s02.dot_by_offset,
    }
    for check, solution in checks.items():
        assert check(solution).status == PASSED, check(solution)
        assert check(stub).status == NOT_ATTEMPTED


def _bigram_unsmoothed(train, val):
    import math

    pairs, firsts = Counter(zip(train, train[1:])), Counter(train[:-1])
    return -sum(math.log2(max(pairs[a, b], 1) / firsts[a]) for a, b in zip(val, val[1:])) / (
        len(val) - 1
    )


@pytest.mark.parametrize(("check", "attempt", "feedback"), [
    ("lesson00.check_bigram", _bigram_unsmoothed, "expected"),
    ("lesson00.check_bigram", lambda t, v: "3.6", "return a number"),
    ("lesson02.check_dot_by_offset", lambda pe, k: (pe * pe).sum(-1), "one dot product per t"),
    ("lesson02.check_dot_by_offset", lambda pe, k: (pe[: len(pe) - k] * pe[k:]).sum(-1) + 1,
     "differ from pe[t]"),
])  # fmt: skip
def test_experiment_checkers_reject_wrong_measurements(check, attempt, feedback):
    import importlib

    module, name = check.split(".")
    result = getattr(importlib.import_module(f"course_lib.exercises.{module}"), name)(attempt)
    assert result.status == FAILED and feedback in result.message, result.message


def test_less_text_rejects_a_tokenizer_trained_on_all_the_text():
    from course_lib.data import course_tokenizer
    from course_lib.exercises import lesson01

    result = lesson01.check_less_text(lambda text: course_tokenizer())
    assert result.status == FAILED and "merges differ" in result.message, result.message
