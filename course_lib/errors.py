"""The course's own errors: clear, expected ones, whose message says what went wrong and how to
fix it (bad input, a missing or damaged file). ``course-lib`` prints such a message and exits 1
(2 for a ``UsageError``); any other exception is a bug and keeps its traceback.

``CourseError`` is a ``ValueError``, so ``except ValueError`` still catches every one of them."""

from __future__ import annotations


class CourseError(ValueError):
    """A clear, expected error; the message names the problem and the fix."""


class UsageError(CourseError):
    """Options of a ``course-lib`` command that do not go together, or a value out of range,
    found after argparse read them: the command exits 2, as argparse does for bad usage."""
