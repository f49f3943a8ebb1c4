"""Lesson 09's checkers: they accept the solutions, say "not attempted" to the stubs, and name
the typical mistakes."""

import pytest

from course_lib.exercises import FAILED, NOT_ATTEMPTED, PASSED, show_solution
from course_lib.exercises import lesson09 as ex09
from course_lib.exercises.solutions import lesson09 as sol09


def stub(*args):
    raise NotImplementedError


def test_split_text_accepts_the_solution():
    assert ex09.check_split_text(sol09.split_text).status == PASSED


def test_split_text_stub_is_not_attempted_with_a_nudge_and_code_on_request(capsys):
    from course_lib.exercises import hint

    result = ex09.check_split_text(stub)
    assert result.status == NOT_ATTEMPTED
    assert "line break" in result.message and "rfind" not in result.message
    hint("lesson09", "split_text")
    assert "rfind" in capsys.readouterr().out


def _plain_cut(text, f):
    cut = int(len(text) * (1 - f))
    return text[:cut], text[cut:]


def _newline_to_val(text, f):
    cut = int(len(text) * (1 - f))
    newline = text.rfind("\n", 0, cut)
    cut = newline if newline > 0 else cut
    return text[:cut], text[cut:]


@pytest.mark.parametrize(
    "attempt, feedback",
    [
        (lambda text, f: sol09.split_text(text, f)[::-1], "wrong way round"),
        (_plain_cut, "in the middle of a line"),
        (_newline_to_val, "belongs to train"),
        (lambda text, f: (text[int(len(text) * f) :], text[: int(len(text) * f)]), "START"),
        (lambda text, f: sol09.split_text(text, 1 - f), "the small part"),
        (lambda text, f: (sol09.split_text(text, f)[0], text), "whole text"),
        (lambda text, f: "not a pair", "a pair"),
    ],
)
def test_split_text_rejects_typical_mistakes(attempt, feedback):
    result = ex09.check_split_text(attempt)
    assert result.status == FAILED and feedback in result.message, result


def test_show_solution_prints_lesson09s(capsys):
    show_solution("lesson09", "split_text")
    assert "rfind" in capsys.readouterr().out
