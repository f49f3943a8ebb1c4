"""Every checker accepts the reference solution, says "not attempted" for the untouched stub,
and rejects the typical mistakes with feedback that names them."""

from collections import Counter

import pytest

from course_lib.exercises import FAILED, NOT_ATTEMPTED, PASSED, show_solution
from course_lib.exercises import lesson00 as ex00
from course_lib.exercises.solutions import lesson00 as sol00


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
