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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

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


class NotAttempted(Exception):
    """Raised inside a check when the learner's function is still as given: the stub, or the
    broken function of a "debug this" exercise, untouched."""


class Feedback(Exception):
    """Raised inside a check to end it with this message: the attempt failed."""


def call(fn: Callable[..., Any], *args: Any) -> Any:
    """Run the learner's ``fn``; a ``NotImplementedError`` means the stub is untouched."""
    try:
        return fn(*args)
    except NotImplementedError as err:
        raise NotAttempted from err


def call_on_copies(fn: Callable[..., Any], *args: Any) -> Any:
    """``call(fn, *args)`` with copies of the tensors among ``args``, so that the checker keeps
    its own; raise ``Feedback``, naming the argument, if ``fn`` changed one of them in place."""
    copies = [a.clone() if isinstance(a, Tensor) else a for a in args]
    got = call(fn, *copies)
    for i, (arg, copy) in enumerate(zip(args, copies)):
        if isinstance(arg, Tensor) and not torch.equal(arg, copy):
            raise Feedback(
                f"your function changed its argument {_parameter_name(fn, i)} in place (an "
                f"operation whose name ends in _, or an assignment into it): leave it as it was "
                f"and return a new tensor, since the caller still needs the original"
            )
    return got


def _parameter_name(fn: Callable[..., Any], i: int) -> str:
    try:
        parameter = list(inspect.signature(fn).parameters.values())[i]
    except (TypeError, ValueError, IndexError):  # a builtin, or fewer names than arguments
        return f"number {i + 1}"
    return f"number {i + 1}" if parameter.kind == parameter.VAR_POSITIONAL else repr(parameter.name)


def describe(x: object) -> str:
    """What came back, for a message: "shape (2, 3)" for a tensor, else the type's name."""
    return f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__


def expect_tensor(got: object, shape: tuple[int, ...], what: str) -> Tensor:
    """``got`` when it is a tensor of ``shape``; else raise ``Feedback``: "return {what}, a
    tensor of shape {shape}, got ..."."""
    if not isinstance(got, Tensor) or tuple(got.shape) != tuple(shape):
        raise Feedback(f"return {what}, a tensor of shape {tuple(shape)}, got {describe(got)}")
    return got


def same(got: object, want: object, atol: float = 1e-5) -> bool:
    """``got`` equals ``want``: a tensor of the same shape, equal (bool, integers) or close
    (floats); a tuple whose items are each ``same``; a float within ``atol``; anything else
    equal (==), a bool never standing for a number."""
    if isinstance(want, tuple):
        return (
            isinstance(got, tuple)
            and len(got) == len(want)
            and all(same(g, w, atol) for g, w in zip(got, want))
        )
    if not isinstance(want, Tensor):
        if isinstance(got, Tensor) or isinstance(got, bool) != isinstance(want, bool):
            return False
        if isinstance(want, float) and isinstance(got, int | float):
            return abs(got - want) <= atol
        return bool(got == want)
    if not isinstance(got, Tensor) or got.shape != want.shape:
        return False
    if want.dtype == torch.bool or not want.is_floating_point():
        return torch.equal(got, want)
    return torch.allclose(got.to(want.dtype), want, atol=atol)


def named_mistake(
    got: object, mistakes: Mapping[Callable[..., object], str], *inputs: Any, atol: float = 1e-5
) -> str | None:
    """The message of the first typical mistake in ``mistakes`` that ``got`` makes, or None.

    ``mistakes`` maps a small function that makes one mistake, ``inputs -> what that mistake
    returns``, to the message that names it; ``got`` makes it when it is ``same`` as that. With
    ``got=True``, each function says itself whether ``inputs`` (a model, say) show its mistake.
    """
    for make, message in mistakes.items():
        if same(got, make(*inputs), atol):
            return message
    return None


def guessed(guess: object, measured: str) -> str:
    """One line of a predict-then-run exercise: the learner's prediction (None: none written)
    beside what the checker measured."""
    if guess is None:
        return f"measured: {measured} (write your prediction in the cell first, then run it)"
    return f"you predicted {guess}; measured: {measured}"


# (lesson, exercise) -> a code-level hint, printed by hint() on request only
_CODE_HINTS: dict[tuple[str, str], str] = {}


def checker(
    exercise: str, hint: str, code_hint: str | None = None
) -> Callable[[Callable[..., str | None]], Callable]:
    """Turn ``check(fn) -> None | str`` (None: correct, str: what is wrong) into a checker.

    The learner's errors become feedback, not tracebacks: a stub (or ``NotAttempted`` raised by
    ``check``) gives "not attempted yet" and ``hint``, a nudge about the idea; ``Feedback``
    raised by ``check`` fails with its message; ``code_hint``, if any, waits for ``hint(lesson,
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
            except NotAttempted:
                return Result(exercise, NOT_ATTEMPTED, nudge)
            except Feedback as feedback:
                return Result(exercise, FAILED, str(feedback))
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
