"""How a GPT was changed after it was built, recorded so that a checkpoint can rebuild it.

Lessons 07 and 08 change a trained GPT: LoRA wraps projections, quantization swaps weights for
int8 codes and their scales, pruning removes heads and neurons. The weights of such a model no
longer fit ``GPT(config)``: its names, shapes and dtypes differ. So every function that changes
a model's structure is decorated with ``@change(name)``, which appends a record to
``model.changes``:

    >>> from torch import nn
    >>> from course_lib.changes import change
    >>> from course_lib.model import GPT, GPTConfig
    >>> @change("add_bias_free_head")
    ... def add_bias_free_head(model, n_classes: int = 3):
    ...     model.head = nn.Linear(model.config.n_embd, n_classes, bias=False)
    ...     return model
    >>> model = GPT(GPTConfig(vocab_size=100, block_size=8, n_layer=1, n_head=2, n_embd=16))
    >>> model = add_bias_free_head(model, n_classes=4)
    >>> model.changes
    [{'change': 'add_bias_free_head', 'args': {'n_classes': 4}}]

``save_checkpoint`` writes ``model.changes`` into ``config.json``; ``load_checkpoint`` builds
``GPT(config)``, calls each recorded function again with its recorded arguments (``replay``),
and only then loads the weights, whose names, shapes and dtypes now fit. A change is therefore
a function that works on *any* model of the right shape (its weights are overwritten next).

- **A name it keeps.** A checkpoint names a change by the name it was registered under, not by
  where its code lives, so the function can be renamed or moved. Checkpoints saved before
  changes had names recorded ``module.function``; ``OLD_NAMES`` still reads those.
- **The same arguments, every time.** The arguments are recorded as JSON, which has no tuples
  and only string keys, so tuples and dicts with int keys ({layer: [head, ...]}) are written
  tagged (``{"$tuple": [...]}``, ``{"$int_keys": {...}}``) and come back as they were. An
  argument that would not come back equal (a tensor, a set) is refused when the change is
  called; the function gets the recorded copy, the first time as on every replay.
- **Nested changes.** A change that calls other changes on the same model is recorded once, as
  itself: its replay calls them again. Which models a change is running on is kept per thread.
- **Undoing.** A function that undoes a change (``merge_lora``, ``dequantize``) ``forget``s its
  record, so that a checkpoint no longer replays it.

Loading runs only registered changes: the course's own (their modules are imported when a
checkpoint names one), or a learner's, registered when the notebook defined it. A checkpoint
never names code to import.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, TypeVar

from torch import nn

from course_lib.errors import CourseError

F = TypeVar("F", bound=Callable[..., Any])

_CHANGES: dict[str, Callable[..., Any]] = {}  # registered name -> the decorated function
# The modules that register the course's changes, imported when a checkpoint names one of those.
COURSE_MODULES = (
    "course_lib.finetune",
    "course_lib.compress.quantize",
    "course_lib.compress.prune",
)
# The names checkpoints saved before changes had names gave the course's (module.function).
OLD_NAMES = {
    "course_lib.finetune.add_lora": "add_lora",
    "course_lib.finetune.add_classifier": "add_classifier",
    "course_lib.compress.quantize.quantize_int8": "quantize_int8",
    "course_lib.compress.quantize.quantize_int4": "quantize_int4",
    "course_lib.compress.quantize.quantize_bf16": "quantize_bf16",
    "course_lib.compress.prune.prune_magnitude": "prune_magnitude",
    "course_lib.compress.prune.prune_heads": "prune_heads",
    "course_lib.compress.prune.prune_neurons": "prune_neurons",
}
# id() of the models a change is running on, in this thread (each thread has its own value).
_running: ContextVar[frozenset[int]] = ContextVar("running_changes", default=frozenset())


class ChangeError(CourseError):
    """A recorded change cannot be replayed; the message names it and the fix."""


def change(name: str) -> Callable[[F], F]:
    """Register ``fn(model, **args)``, a function that changes a GPT in place (and returns it),
    under ``name``, so that each call is recorded in ``model.changes`` and a checkpoint can
    replay it: ``@change("add_lora")``. A name is an identifier (no dot: an old name has one),
    and names one function; defining that function again (a notebook cell run twice) is fine."""
    if not isinstance(name, str) or not name.isidentifier():
        raise CourseError(
            f"@change needs the name checkpoints will record, a Python identifier, got "
            f'{getattr(name, "__name__", name)!r}: write @change("my_change") above the function'
        )

    def register(fn: F) -> F:
        taken = _CHANGES.get(name)
        if taken is not None and _where(taken) != _where(fn):  # the same function: a rerun cell
            raise CourseError(
                f"the change name {name!r} is taken by {_where(taken)}: register {_where(fn)} "
                f"under another name"
            )
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(model, *args, **kwargs)
            bound.apply_defaults()
            recorded = {k: _recorded(name, k, v) for k, v in list(bound.arguments.items())[1:]}
            running = _running.get()
            token = _running.set(running | {id(model)})
            try:
                result = fn(model, **recorded)
            finally:
                _running.reset(token)
            if id(model) not in running:  # not called by another change of this model
                model.changes = [*getattr(model, "changes", []), {"change": name, "args": recorded}]
            return result

        wrapper.change_name = name  # type: ignore[attr-defined]
        _CHANGES[name] = wrapper
        return wrapper  # type: ignore[return-value]

    return register


def keeps_shapes(fn: F) -> F:
    """Mark a change that leaves every weight's name, shape and dtype as they were (it only
    changes values, or how training treats them): the model still is GPT-2's architecture,
    and ``to_hf`` converts it."""
    fn.keeps_shapes = True  # type: ignore[attr-defined]
    return fn


def changes_shapes(record: dict) -> bool:
    """Whether the recorded change alters the weights' names, shapes or dtypes."""
    return not getattr(_find(record["change"]), "keeps_shapes", False)


def applied(model: nn.Module, *fns: Callable[..., Any]) -> list[dict]:
    """The records in ``model.changes`` of calls to the changes ``fns``, in order."""
    names = {fn.change_name for fn in fns}  # type: ignore[attr-defined]
    return [record for record in model.changes if record["change"] in names]


def forget(model: nn.Module, *fns: Callable[..., Any]) -> nn.Module:
    """Drop the records of the changes ``fns`` from ``model.changes``, for a function that has
    undone them (``merge_lora`` folds the adapters in): checkpoints no longer replay them."""
    names = {fn.change_name for fn in fns}  # type: ignore[attr-defined]
    model.changes = [record for record in model.changes if record["change"] not in names]
    return model


def replay(model: nn.Module, changes: list[dict]) -> nn.Module:
    """Apply the recorded ``changes`` (``model.changes`` of another model, or a config.json's
    read by ``changes_from_json``) to ``model``."""
    for record in changes:
        _find(record["change"])(model, **record["args"])
    return model


# ---------------------------------------------------------------------------------------------
# To and from config.json


def changes_to_json(changes: list[dict]) -> list[dict]:
    """``model.changes`` as config.json holds them: tuples and int-keyed dicts tagged."""
    return [{"change": r["change"], "args": _to_json(r["args"])} for r in changes]


def changes_from_json(items: Any) -> list[dict]:
    """The records a config.json holds, as ``model.changes`` holds them: arguments untagged,
    an old name (``OLD_NAMES``, or the ``module.function`` of a learner's change registered
    now) as registered now, with the int keys plain JSON turned into strings."""
    if not isinstance(items, list):
        raise ChangeError(f"changes must be a list, got {type(items).__name__}")
    changes = []
    for item in items:
        if not (
            isinstance(item, dict)
            and isinstance(item.get("change"), str)
            and isinstance(item.get("args", {}), dict)
        ):
            raise ChangeError(
                f"a recorded change must be {{'change': 'name', 'args': {{...}}}}, got {item!r}: "
                f"put back the config.json saved with the weights"
            )
        name, args = item["change"], _from_json(item.get("args", {}))
        if "." in name:  # from before names: module.function, {layer: [...]} with "0" keys
            learners = (n for n, fn in _CHANGES.items() if _where(fn) == name)
            name = OLD_NAMES.get(name) or next(learners, name)
            args = {k: _int_keys(v) for k, v in args.items()}
        changes.append({"change": name, "args": args})
    return changes


def _recorded(change_name: str, arg: str, value: Any) -> Any:
    """``value`` as a checkpoint gives it back: a copy that is equal to it, or a CourseError."""
    try:
        back = _from_json(json.loads(json.dumps(_to_json(value))))
        same = back == value or repr(back) == repr(value)  # NaN comes back, unequal to itself
    except (TypeError, ValueError):
        same = False
    if not same:
        raise CourseError(
            f"{change_name}: {arg}={value!r} cannot be recorded in a checkpoint, which gives "
            f"back numbers, strings, booleans, None, and lists, tuples and dicts of them (dict "
            f"keys all strings or all ints): pass it as those (a tensor as .tolist())"
        )
    return back


def _to_json(value: Any) -> Any:
    if isinstance(value, tuple):
        return {"$tuple": [_to_json(v) for v in value]}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        encoded = {str(k): _to_json(v) for k, v in value.items()}
        int_keys = value and all(type(k) is int for k in value)  # bool is no int here
        return {"$int_keys": encoded} if int_keys else encoded
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    if isinstance(value, dict):
        if value.keys() == {"$tuple"}:
            return tuple(_from_json(v) for v in value["$tuple"])
        if value.keys() == {"$int_keys"}:
            return {int(k): _from_json(v) for k, v in value["$int_keys"].items()}
        return {k: _from_json(v) for k, v in value.items()}
    return value


def _int_keys(value: Any) -> Any:
    """A dict whose keys are all strings of digits with int keys (what an old record meant)."""
    if isinstance(value, dict) and all(isinstance(k, str) and k.isdigit() for k in value):
        return {int(k): v for k, v in value.items()}
    return value


def _find(name: str) -> Callable[..., Any]:
    if name not in _CHANGES:  # the course's own changes register when their modules load
        for module in COURSE_MODULES:
            importlib.import_module(module)
    if name not in _CHANGES:
        raise ChangeError(
            f"the model was changed by {name}, which this program does not know: define or "
            f"import the change registered under that name before loading (a change of your "
            f"own), or update course_lib to the version that saved the checkpoint"
        )
    return _CHANGES[name]


def _where(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"
