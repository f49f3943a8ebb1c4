"""Every checker accepts the reference solution, says "not attempted" for the untouched stub,
and rejects the typical mistakes with feedback that names them."""

import math
from collections import Counter

import pytest
import torch

from course_lib.exercises import FAILED, NOT_ATTEMPTED, PASSED, show_solution
from course_lib.exercises import lesson00 as ex00
from course_lib.exercises import lesson01 as ex01
from course_lib.exercises import lesson02 as ex02
from course_lib.exercises import lesson03 as ex03
from course_lib.exercises import lesson04 as ex04
from course_lib.exercises.solutions import lesson00 as sol00
from course_lib.exercises.solutions import lesson01 as sol01
from course_lib.exercises.solutions import lesson02 as sol02
from course_lib.exercises.solutions import lesson03 as sol03
from course_lib.exercises.solutions import lesson04 as sol04
from course_lib.positional import sinusoidal_encoding


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


def _pairs_stepping_two(ids):
    return dict(Counter(zip(ids[::2], ids[1::2])))


def _pairs_missing_last(ids):
    return dict(Counter(zip(ids[:-1], ids[1:-1])))


def _merge_first_only(ids, pair, new_id):
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == pair:
            return [*ids[:i], new_id, *ids[i + 2 :]]
    return list(ids)


def _merge_without_skipping(ids, pair, new_id):
    return [new_id if (a, b) == pair else a for a, b in zip(ids, ids[1:])] + ids[-1:]


def _merge_dropping_last(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _merge_in_place(ids, pair, new_id):
    merged = sol01.merge(ids, pair, new_id)
    ids[:] = merged
    return merged


def test_pair_counts_accepts_solution():
    assert ex01.check_pair_counts(sol01.pair_counts).status == PASSED


def test_pair_counts_stub_is_not_attempted():
    result = ex01.check_pair_counts(stub)
    assert result.status == NOT_ATTEMPTED and "zip(ids, ids[1:])" in result.message


@pytest.mark.parametrize(("attempt", "feedback"), [
    (lambda ids: dict(Counter(ids)), "counted single ids"),
    (_pairs_stepping_two, "pairs overlap"),
    (_pairs_missing_last, "missed the last pair"),
    (lambda ids: {list(p): n for p, n in Counter(zip(ids, ids[1:])).items()}, "raised TypeError"),
    (lambda ids: {str(p): n for p, n in Counter(zip(ids, ids[1:])).items()}, "must be tuples"),
    (lambda ids: list(zip(ids, ids[1:])), "return a dict"),
])  # fmt: skip
def test_pair_counts_rejects_typical_mistakes(attempt, feedback):
    result = ex01.check_pair_counts(attempt)
    assert result.status == FAILED
    assert feedback in result.message


def test_merge_accepts_solution():
    assert ex01.check_merge(sol01.merge).status == PASSED


def test_merge_stub_is_not_attempted():
    assert ex01.check_merge(stub).status == NOT_ATTEMPTED


@pytest.mark.parametrize(("attempt", "feedback"), [
    (_merge_first_only, "only the first occurrence"),
    (_merge_without_skipping, "skip both ids"),
    (_merge_dropping_last, "last id went missing"),
    (_merge_in_place, "don't change the list"),
    (lambda ids, pair, new_id: tuple(sol01.merge(ids, pair, new_id)), "return a list"),
])  # fmt: skip
def test_merge_rejects_typical_mistakes(attempt, feedback):
    result = ex01.check_merge(attempt)
    assert result.status == FAILED
    assert feedback in result.message


# --- lesson 02 -----------------------------------------------------------------------------------


def _pe(n, dim, base=10000.0, step=2, f_even=torch.sin, f_odd=torch.cos, layout="interleave"):
    i = torch.arange(0, dim, 2).double() if step == 2 else torch.arange(dim // 2).double()
    angle = torch.arange(n).double()[:, None] / base ** (i / dim)
    even, odd = f_even(angle), f_odd(angle)
    if layout == "halves":
        return torch.cat([even, odd], dim=-1).float()
    return torch.stack([even, odd], dim=-1).flatten(-2).float()


def test_sinusoidal_encoding_accepts_solution_and_course_lib():
    assert ex02.check_sinusoidal_encoding(sol02.sinusoidal_encoding).passed
    assert ex02.check_sinusoidal_encoding(sinusoidal_encoding).passed


def test_sinusoidal_encoding_stub_is_not_attempted():
    assert ex02.check_sinusoidal_encoding(stub).status == NOT_ATTEMPTED


@pytest.mark.parametrize(("attempt", "feedback"), [
    (lambda n, d: _pe(n, d, f_even=torch.cos, f_odd=torch.sin), "swapped"),
    (lambda n, d: _pe(n, d, step=1), "missing its factor 2"),
    (lambda n, d: _pe(n, d, base=1000.0), "base is not 10000"),
    (lambda n, d: _pe(n, d, f_even=lambda a: a.sin() + a.cos(), f_odd=lambda a: a.sin() + a.cos()),
     "added sin and cos"),
    (lambda n, d: _pe(n, d, layout="halves"), "interleave"),
    (lambda n, d: _pe(n, d, base=1 / 10000.0), "inverted"),
    (lambda n, d: _pe(n, d).T, "transposed"),
    (lambda n, d: _pe(n, d).numpy(), "return a torch.Tensor"),
    (lambda n, d: _pe(n, d) + 0.1, "should be"),
])  # fmt: skip
def test_sinusoidal_encoding_rejects_typical_mistakes(attempt, feedback):
    result = ex02.check_sinusoidal_encoding(attempt)
    assert result.status == FAILED
    assert feedback in result.message


# --- lesson 03 -----------------------------------------------------------------------------------


def _attention(q, k, v, scale=None, mask=True, dim=-1, after=False, inverted=False, weights=False):
    T, d = q.shape[-2], q.shape[-1]
    scores = q @ k.transpose(-2, -1) * (1 / math.sqrt(d) if scale is None else scale)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    if inverted:
        future = ~future
    if mask and not after:
        scores = scores.masked_fill(future, float("-inf"))
    w = scores.softmax(dim=dim)
    if after:
        w = w.masked_fill(future, 0.0)
    return w if weights else w @ v


def test_masked_attention_accepts_solution():
    assert ex03.check_masked_attention(sol03.masked_attention).passed


def test_masked_attention_stub_is_not_attempted():
    assert ex03.check_masked_attention(stub).status == NOT_ATTEMPTED


@pytest.mark.parametrize(("kwargs", "feedback"), [
    ({"scale": 1.0}, "no scaling"),
    ({"scale": 1 / 8}, "divided by d_k"),
    ({"mask": False}, "future is not hidden"),
    ({"after": True}, "after the softmax"),
    ({"dim": -2}, "wrong dimension"),
    ({"inverted": True}, "mask inverted"),
    ({"weights": True}, "that is the weights"),
])  # fmt: skip
def test_masked_attention_rejects_typical_mistakes(kwargs, feedback):
    result = ex03.check_masked_attention(lambda q, k, v: _attention(q, k, v, **kwargs))
    assert result.status == FAILED
    assert feedback in result.message


def test_split_and_merge_heads_accept_solutions():
    assert ex03.check_split_heads(sol03.split_heads).passed
    assert ex03.check_merge_heads(sol03.merge_heads).passed


@pytest.mark.parametrize(("attempt", "feedback"), [
    (lambda x, n: x.view(x.shape[0], x.shape[1], n, -1), "transpose(1, 2) so that"),
    (lambda x, n: x.view(x.shape[0], n, x.shape[1], -1), "mixes tokens into heads"),
    (lambda x, n: x.view(x.shape[0], n, -1), "should be (2, 3, 5, 4)"),
])  # fmt: skip
def test_split_heads_rejects_typical_mistakes(attempt, feedback):
    result = ex03.check_split_heads(attempt)
    assert result.status == FAILED and feedback in result.message


@pytest.mark.parametrize(("attempt", "feedback"), [
    (lambda y: y.reshape(y.shape[0], y.shape[2], -1), "without transposing back"),
    (lambda y: y.transpose(1, 2), "should be (2, 5, 12)"),
])  # fmt: skip
def test_merge_heads_rejects_typical_mistakes(attempt, feedback):
    result = ex03.check_merge_heads(attempt)
    assert result.status == FAILED and feedback in result.message


# --- lesson 04 -----------------------------------------------------------------------------------


def test_param_count_accepts_solution():
    assert ex04.check_param_count(sol04.param_count).passed


def test_param_count_stub_is_not_attempted():
    assert ex04.check_param_count(stub).status == NOT_ATTEMPTED


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


@pytest.mark.parametrize(("attempt", "feedback"), [
    (_count_untied, "weight tying"),
    (_count_no_positions, "position embeddings are missing"),
    (_count_no_norms, "LayerNorms are missing"),
    (_count_no_biases, "biases are missing"),
    (_count_narrow_mlp, "4 x n_embd"),
    (lambda c: 42, "the model has"),
])  # fmt: skip
def test_param_count_rejects_typical_mistakes(attempt, feedback):
    result = ex04.check_param_count(attempt)
    assert result.status == FAILED and feedback in result.message


def test_block_forward_accepts_solution():
    assert ex04.check_block_forward(sol04.block_forward).passed


def test_block_forward_stub_is_not_attempted():
    assert ex04.check_block_forward(stub).status == NOT_ATTEMPTED


def _post_norm(block, x):
    x = block.ln_1(x + block.attn(x)[0])
    return block.ln_2(x + block.mlp(x))


def _no_residual(block, x):
    return block.mlp(block.ln_2(block.attn(block.ln_1(x))[0]))


def _no_mlp_residual(block, x):
    x = x + block.attn(block.ln_1(x))[0]
    return block.mlp(block.ln_2(x))


def _ln1_twice(block, x):
    x = x + block.attn(block.ln_1(x))[0]
    return x + block.mlp(block.ln_1(x))


def _parallel(block, x):
    return x + block.attn(block.ln_1(x))[0] + block.mlp(block.ln_2(x))


@pytest.mark.parametrize(("attempt", "feedback"), [
    (_post_norm, "post-norm"),
    (_no_residual, "residual connections are missing"),
    (_no_mlp_residual, "MLP branch has no residual"),
    (_ln1_twice, "must use ln_2"),
    (_parallel, "output of the attention step"),
    (lambda block, x: block.attn(block.ln_1(x)), "output differs"),
])  # fmt: skip
def test_block_forward_rejects_typical_mistakes(attempt, feedback):
    result = ex04.check_block_forward(attempt)
    assert result.status == FAILED and feedback in result.message
