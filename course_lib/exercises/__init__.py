"""Checkers for the exercises at the end of every lesson: one module per lesson.

A checker takes the learner's function, runs it on inputs whose answers it knows, and returns
a ``Result`` that prints as one line of feedback: what passed, or which input gave which wrong
value and the likely mistake. An untouched stub (one that raises ``NotImplementedError``) is
"not attempted yet", with a hint how to start, so every notebook runs green as shipped.

Solutions live in ``course_lib/exercises/solutions/`` (one module per lesson); print one with
``show_solution("lesson00", "char_frequencies")`` once you have tried.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PASSED, FAILED, NOT_ATTEMPTED = "passed", "failed", "not attempted"
_ICONS = {PASSED: "✅", FAILED: "❌", NOT_ATTEMPTED: "⏳"}


@dataclass(frozen=True)
class Result:
    """The outcome of one check: ``status`` is "passed", "failed" or "not attempted"."""

    exercise: str
    status: str
    message: str

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    def __repr__(self) -> str:
        return f"{_ICONS[self.status]} {self.exercise}: {self.message}"

    __str__ = __repr__


class _Stub(Exception):
    """Raised inside a checker when the learner's function is still the stub."""


def call(fn: Callable[..., Any], *args: Any) -> Any:
    """Run the learner's ``fn``; a ``NotImplementedError`` means the stub is untouched."""
    try:
        return fn(*args)
    except NotImplementedError as err:
        raise _Stub from err


def checker(exercise: str, hint: str) -> Callable[[Callable[..., str | None]], Callable]:
    """Turn ``check(fn) -> None | str`` (None: correct, str: what is wrong) into a checker.

    The learner's errors become feedback, not tracebacks: a stub gives "not attempted yet" and
    ``hint``; an exception inside their function names its type and message.
    """

    def wrap(check: Callable[..., str | None]) -> Callable[..., Result]:
        def run(fn: Callable[..., Any], *args: Any) -> Result:
            try:
                problem = check(fn, *args)
            except _Stub:
                return Result(exercise, NOT_ATTEMPTED, f"not attempted yet. {hint}")
            except Exception as err:  # the learner's code failed: say how, don't crash
                return Result(exercise, FAILED, f"your function raised {type(err).__name__}: {err}")
            if problem:
                return Result(exercise, FAILED, problem)
            return Result(exercise, PASSED, "correct, well done!")

        run.__doc__ = check.__doc__
        run.__name__ = check.__name__
        return run

    return wrap


def show_solution(lesson: str, exercise: str) -> None:
    """Print the reference solution of ``exercise`` from ``lesson`` (e.g. "lesson00")."""
    module = importlib.import_module(f"course_lib.exercises.solutions.{lesson}")
    print(inspect.getsource(getattr(module, exercise)))
