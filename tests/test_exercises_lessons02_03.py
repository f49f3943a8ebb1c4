"""The experiments of Lessons 02 and 03: each checker runs the learner's function on inputs the
lesson has not shown, reports what it measured, and asserts the outcome."""

import torch

from course_lib.exercises import FAILED, PASSED
from course_lib.exercises import lesson02 as ex02
from course_lib.exercises import lesson03 as ex03
from course_lib.exercises.solutions import lesson02 as sol02
from course_lib.exercises.solutions import lesson03 as sol03


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


def test_attention_weights_reports_that_the_scale_does_not_undo_larger_entries(capsys):
    assert ex03.check_attention_weights(sol03.attention_weights).status == PASSED
    report = capsys.readouterr().out
    assert "bits at std 0.5" in report and "bits at std 4" in report
    assert "not the size of the entries" in report


def test_attention_weights_rejects_a_scale_by_the_size_of_the_entries():
    def normalized(q, k, scaled):  # divides by the scores' own spread: never saturates
        scores = q @ k.T
        return (scores / scores.std() if scaled else scores).softmax(-1)

    result = ex03.check_attention_weights(normalized)
    assert result.status == FAILED and "differ" in result.message, result.message
