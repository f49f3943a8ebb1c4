"""How a GPT was changed after it was built, recorded so that a checkpoint can rebuild it.

Lessons 07 and 08 change a trained GPT: LoRA wraps projections, quantization swaps weights for
int8 codes and their scales, pruning removes heads and neurons. The weights of such a model no
longer fit ``GPT(config)``: its names, shapes and dtypes differ. So every function that changes
a model's structure is decorated with ``@change``, which appends a record to ``model.changes``:

    >>> from course_lib.changes import change
    >>> @change
    ... def add_bias_free_head(model, n_classes: int = 3): ...       # doctest: +SKIP
    >>> add_bias_free_head(model, n_classes=4)                       # doctest: +SKIP
    >>> model.changes                                                # doctest: +SKIP
    [{'change': '__main__.add_bias_free_head', 'args': {'n_classes': 4}}]

``save_checkpoint`` writes ``model.changes`` into ``config.json``; ``load_checkpoint`` builds
``GPT(config)``, calls each recorded function again with its recorded arguments (``replay``),
and only then loads the weights, whose names, shapes and dtypes now fit. A change is therefore
a function that works on *any* model of the right shape (its weights are overwritten next),
whose arguments are plain JSON: the decorator calls it with the arguments as they come back
from JSON, the first time too, so the first call and every replay are the same call.

Loading imports only from ``course_lib`` itself, or a module the program has already imported
(a learner's own change, defined in their notebook): a checkpoint never names code to load.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from course_lib.errors import CourseError

F = TypeVar("F", bound=Callable[..., Any])
_depth = 0  # > 0 while a change runs: the changes it calls are part of it, not recorded apart


class ChangeError(CourseError):
    """A recorded change cannot be replayed; the message names it and the fix."""


def change(fn: F) -> F:
    """Decorate ``fn(model, **args)``, a function that changes a GPT in place (and returns it),
    so that each call is recorded in ``model.changes`` and a checkpoint can replay it."""
    signature = inspect.signature(fn)
    name = f"{fn.__module__}.{fn.__qualname__}"

    @functools.wraps(fn)
    def wrapper(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        global _depth
        bound = signature.bind(model, *args, **kwargs)
        bound.apply_defaults()
        recorded = dict(list(bound.arguments.items())[1:])  # all but the model
        try:  # through JSON and back: what a checkpoint will hand to the replay
            recorded = json.loads(json.dumps(recorded))
        except TypeError as err:
            raise TypeError(
                f"{name}: its arguments must be plain JSON (numbers, strings, lists, dicts) to "
                f"be recorded in a checkpoint, got {err}"
            ) from None
        _depth += 1
        try:
            result = fn(model, **recorded)
        finally:
            _depth -= 1
        if _depth == 0:
            model.changes = [*getattr(model, "changes", []), {"change": name, "args": recorded}]
        return result

    wrapper.change_name = name  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def keeps_shapes(fn: F) -> F:
    """Mark a change that leaves every weight's name, shape and dtype as they were (it only
    changes values, or how training treats them): the model still is GPT-2's architecture,
    and ``to_hf`` converts it."""
    fn.keeps_shapes = True  # type: ignore[attr-defined]
    return fn


def changes_shapes(record: dict) -> bool:
    """Whether the recorded change alters the weights' names, shapes or dtypes."""
    return not getattr(_find(record), "keeps_shapes", False)


def replay(model: nn.Module, changes: list[dict]) -> nn.Module:
    """Apply the recorded ``changes`` (from ``model.changes`` or a config.json) to ``model``."""
    for record in changes:
        fn = _find(record)
        fn(model, **record.get("args", {}))
    return model


def _find(record: Any) -> Callable[..., Any]:
    if not isinstance(record, dict) or not isinstance(record.get("change"), str):
        raise ChangeError(
            f"a recorded change must be {{'change': 'module.function', 'args': {{...}}}}, got "
            f"{record!r}: put back the config.json saved with the weights"
        )
    module_name, _, fn_name = record["change"].rpartition(".")
    if module_name not in sys.modules and module_name.split(".")[0] == "course_lib":
        with contextlib.suppress(ImportError):  # reported below, with the fix
            importlib.import_module(module_name)
    fn = getattr(sys.modules.get(module_name), fn_name, None)
    if not callable(fn) or getattr(fn, "change_name", None) != record["change"]:
        raise ChangeError(
            f"the model was changed by {record['change']}, which this program does not know: "
            f"import the module that defines it before loading (a change of your own), or "
            f"update course_lib to the version that saved the checkpoint"
        )
    return fn
