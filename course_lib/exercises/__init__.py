"""Checkers for the exercises at the end of every lesson: one module per lesson.

A checker takes the learner's function, runs it on inputs whose answers it knows, and returns
a ``Result`` that prints as one line of feedback: what passed, or which input gave which wrong
value and the likely mistake. An untouched stub (one that raises ``NotImplementedError``) is
"not attempted yet", with a hint how to start, so every notebook runs green as shipped.

A stub's message is a nudge about the idea, never the code. A code-level hint comes only on
request: ``hint("lesson03", "split_heads")``. Solutions live in
``course_lib/exercises/solutions/`` (one module per lesson); print one with
``show_solution("lesson00", "char_frequencies")`` once you have tried.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from course_lib.errors import CourseError

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


# (lesson, exercise) -> a code-level hint, printed by hint() on request only
_CODE_HINTS: dict[tuple[str, str], str] = {}


def checker(
    exercise: str, hint: str, code_hint: str | None = None
) -> Callable[[Callable[..., str | None]], Callable]:
    """Turn ``check(fn) -> None | str`` (None: correct, str: what is wrong) into a checker.

    The learner's errors become feedback, not tracebacks: a stub gives "not attempted yet" and
    ``hint``, a nudge about the idea; ``code_hint``, if any, waits for ``hint(lesson,
    exercise)``. An exception inside their function names its type and message.
    """

    def wrap(check: Callable[..., str | None]) -> Callable[..., Result]:
        lesson = check.__module__.rpartition(".")[2]
        nudge = f"not attempted yet. {hint}"
        if code_hint:
            _CODE_HINTS[lesson, exercise] = code_hint
            nudge += f" Stuck? hint({lesson!r}, {exercise!r}) says more."

        def run(fn: Callable[..., Any], *args: Any) -> Result:
            try:
                problem = check(fn, *args)
            except _Stub:
                return Result(exercise, NOT_ATTEMPTED, nudge)
            except Exception as err:  # the learner's code failed: say how, don't crash
                return Result(exercise, FAILED, f"your function raised {type(err).__name__}: {err}")
            if problem:
                return Result(exercise, FAILED, problem)
            return Result(exercise, PASSED, "correct, well done!")

        run.__doc__ = check.__doc__
        run.__name__ = run.__qualname__ = check.__name__
        run.__module__ = check.__module__
        return run

    return wrap


def hint(lesson: str, exercise: str) -> None:
    """Print a code-level hint for ``exercise`` of ``lesson`` (e.g. "lesson03"), one step short
    of the solution."""
    importlib.import_module(f"course_lib.exercises.{lesson}")  # registers its hints
    text = _CODE_HINTS.get((lesson, exercise))
    if text is None:
        raise CourseError(
            f"no code-level hint for {exercise!r} of {lesson}: the checker's message is the "
            f"hint there; show_solution({lesson!r}, {exercise!r}) prints a solution"
        )
    print(text)


def show_solution(lesson: str, exercise: str) -> None:
    """Print the reference solution of ``exercise`` from ``lesson`` (e.g. "lesson00")."""
    module = importlib.import_module(f"course_lib.exercises.solutions.{lesson}")
    print(inspect.getsource(getattr(module, exercise)))
