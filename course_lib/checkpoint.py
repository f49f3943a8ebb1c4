"""Checkpoints: a model, how it was changed, its tokenizer and its training state in one folder.

Lesson 05 (pretraining) derives this.

A checkpoint is a folder of plain files, nothing pickled, so loading one runs no code:

    course/
      model.safetensors        the weights; the tied wte/lm_head matrix stored once
      config.json              {"model": GPTConfig fields, "changes": [...], "train": TrainConfig
                               fields or null, "run": what the run trained with, or null}
      tokenizer.json           the tokenizer (Hugging Face format), when one was given
      train_state.safetensors  optimizer moments and step, RNG states (uint8), for exact resume
      train_state.json         the step, elapsed seconds, python's random state, optimizer settings
      best/                    a run with keep_best: the checkpoint of lowest validation loss

A changed model (LoRA adapters, quantized layers, pruned heads: ``course_lib.changes``) records
its changes in config.json; loading builds ``GPT(config)``, replays them, and only then loads
the weights, checking every name, shape and dtype: an int8 tensor is never cast silently.

It is written atomically: everything goes into a sibling folder ``course.tmp-<pid>``, is flushed
to disk, and only then replaces ``course`` (``files.fresh_folder`` / ``files.swap_in``). A crash
while saving leaves the previous checkpoint as it was; a crash between the two renames of the
swap is finished by the next reader (``files.recover``). ``best/`` is a checkpoint folder of
its own, written the same way; saving the last one carries it over (hard links, no copy), so
a kill at any moment leaves both.

    >>> from course_lib.checkpoint import load_checkpoint, save_checkpoint
    >>> from course_lib.model import GPT, GPTConfig
    >>> from course_lib.tokenizer import BPETokenizer
    >>> tokenizer = BPETokenizer()
    >>> tokenizer.train("to be or not to be", vocab_size=260)
    >>> model = GPT(GPTConfig(vocab_size=260, block_size=16, n_layer=1, n_head=2, n_embd=16))
    >>> folder = save_checkpoint("runs/tiny", model, tokenizer)
    >>> sorted(file.name for file in folder.iterdir())
    ['config.json', 'model.safetensors', 'tokenizer.json']
    >>> ckpt = load_checkpoint("runs/tiny")     # also ckpt.model, ckpt.train_config, ...
    >>> ckpt.config == model.config, ckpt.tokenizer.vocab_size, ckpt.train_state
    (True, 260, None)
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from course_lib.changes import ChangeError, changes_from_json, changes_to_json, replay
from course_lib.errors import CourseError
from course_lib.files import fresh_folder, fsync, recover, retry_if_swapped, swap_in, write_atomic
from course_lib.model import GPT, GPTConfig
from course_lib.tokenizer import BPETokenizer
from course_lib.train_state import (
    STATE_JSON,
    STATE_TENSORS,
    TrainState,
    read_train_state,
    save_train_state,
    saved_run,
)

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER = "tokenizer.json"
BEST = "best"  # the subfolder where a run with keep_best keeps its lowest-val-loss checkpoint
FORMAT = "course_lib checkpoint"
# 1: no "changes" and no "run" in config.json (read as none); 2: changes named module.function,
# their arguments plain JSON (read as course_lib.changes.OLD_NAMES says)
VERSION = 3
T = TypeVar("T")


class CheckpointError(CourseError):
    """A checkpoint is missing, damaged or inconsistent; the message names the path and the fix."""


def _retry(load: Callable[..., T]) -> Callable[..., T]:
    return retry_if_swapped(load, (CheckpointError, OSError, RuntimeError))


@dataclass
class Checkpoint:
    """What ``load_checkpoint`` returns. ``train_config`` is the TrainConfig as saved, a dict
    (``TrainConfig(**ckpt.train_config)`` rebuilds it); ``run`` says what the run trained with
    (loss, batches, trainable parameters); tokenizer, train state and run may be None. The
    model's changes are ``ckpt.model.changes``. ``which`` is "last" or "best" (the folder's
    ``best/``, kept by a run with keep_best)."""

    path: Path
    model: GPT
    config: GPTConfig
    tokenizer: BPETokenizer | None
    train_state: TrainState | None
    train_config: dict | None
    run: dict | None = None
    which: str = "last"


# ---------------------------------------------------------------------------------------------
# Saving


def save_checkpoint(
    path: str | Path,
    model: GPT,
    tokenizer: BPETokenizer | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    train_state: TrainState | None = None,
    train_config: Any = None,
    run: dict | None = None,
    keep: tuple[str, ...] = (),
) -> Path:
    """Write ``model`` (and whatever else is given) as the checkpoint folder ``path``, atomically.

    ``optimizer`` is stored with ``train_state`` (which says at which step it is); pass both to
    be able to resume. ``train_config`` is a dataclass (TrainConfig) or a dict; ``run`` a dict
    of what the run trained with (``train`` fills it). ``keep`` names subfolders of the
    checkpoint now at ``path`` to carry into the new one (``("best",)``). Returns ``path``.
    """
    path = Path(path)
    config = getattr(model, "config", None)
    if not isinstance(model, nn.Module) or not isinstance(config, GPTConfig):
        raise TypeError(f"model must be a GPT (with a GPTConfig), got {type(model).__name__}")
    if tokenizer is not None and tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(_vocab_mismatch(path, tokenizer.vocab_size, config.vocab_size))
    if optimizer is not None and train_state is None:
        raise CourseError(
            "an optimizer is saved as part of the training state: pass train_state too, e.g. "
            "TrainState.capture(step, generator)"
        )
    recover(path, CONFIG)
    tmp = fresh_folder(path)
    try:
        for name in keep:  # hard links: the old folder goes, the files stay, nothing copied
            old = path / name
            recover(old, CONFIG)
            if old.is_dir():
                shutil.copytree(old, tmp / name, copy_function=_link_or_copy)
        # The folder is swapped in whole, so its files need no atomic writes of their own, only
        # a flush to the disk. safetensors stores each shared (tied) tensor once.
        safetensors.torch.save_model(model, str(tmp / WEIGHTS))
        if tokenizer is not None:
            tokenizer.save(tmp / TOKENIZER)
        if train_state is not None:
            save_train_state(tmp, train_state, optimizer)
        if dataclasses.is_dataclass(train_config):
            train_config = dataclasses.asdict(train_config)
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "model": dataclasses.asdict(config),
            "changes": changes_to_json(getattr(model, "changes", [])),
            "train": train_config,
            "run": run,
        }
        for file in tmp.rglob("*"):
            fsync(file)
        # config.json last: a folder that has it is complete (what files.recover relies on).
        write_atomic(tmp / CONFIG, _json(meta))
        fsync(tmp)  # the folder's entries, before it takes the checkpoint's name
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the old checkpoint was never touched
        raise
    swap_in(tmp, path)
    fsync(path.parent)
    for stale in [*path.parent.glob(f"{path.name}.tmp-*"), *path.parent.glob(f"{path.name}.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)  # leftovers of saves killed before this one
    return path


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links
        shutil.copy2(src, dst)


def _json(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, default=str).encode()  # default=str: Path values


# ---------------------------------------------------------------------------------------------
# Loading


def checkpoint_exists(path: str | Path) -> bool:
    """Whether ``path`` holds a checkpoint (after finishing a swap a crash interrupted)."""
    path = Path(path)
    recover(path, CONFIG)
    return (path / WEIGHTS).is_file()


def load_checkpoint(
    path: str | Path, device: str | torch.device | None = None, which: str | None = None
) -> Checkpoint:
    """Read the checkpoint folder ``path``: the model (changes replayed, in eval mode), its
    config, tokenizer, training state and run. ``device=None`` keeps the weights on the CPU,
    where any device can take them (``model.to(get_device())`` moves them). Never unpickles:
    safetensors and JSON only.

    A run trained with keep_best holds two models: the last (``path`` itself, which resume
    continues) and the one of lowest validation loss (``path/best``). ``which`` is "best" or
    "last"; None loads the best where there is one, and says so on stderr when it is not
    also the last.
    """
    if which not in (None, "best", "last"):
        raise CourseError(f"which must be 'best', 'last' or None (the best if kept), got {which!r}")
    path = Path(path)
    has_best = path.name != BEST and checkpoint_exists(path / BEST)
    if which == "best" and not has_best:
        raise CheckpointError(
            f"{path} has no {BEST}/ checkpoint: its run did not keep one (TrainConfig("
            f"keep_best=True) does). Load the last one, which='last'"
        )
    if which == "last" or not has_best:
        return _load(path, device)
    ckpt = _load(path / BEST, device)
    ckpt.which = BEST
    if which is None:
        state = ckpt.train_state
        last = load_train_state(path) if checkpoint_exists(path) else None
        if last is None or last.step != state.step:  # a choice was made: say which
            also = "" if last is None else f" (the last is step {last.step}: which='last')"
            print(f"{path}: loaded the best checkpoint, step {state.step}, validation loss "
                  f"{state.best_val_loss:.4f}{also}", file=sys.stderr)  # fmt: skip
    return ckpt


@_retry
def _load(path: str | Path, device: str | torch.device | None) -> Checkpoint:
    folder = _check_folder(Path(path))
    meta = read_meta(folder)
    config = GPTConfig(**meta["model"])
    model = GPT(config)
    try:
        replay(model, meta["changes"])
    except ChangeError as err:
        raise CheckpointError(f"{folder / CONFIG}: {err}") from None
    load_weights(model, folder, config_source=folder / CONFIG)
    model.eval()
    if device is not None:
        model.to(device)
    tokenizer = None
    if (folder / TOKENIZER).is_file():
        try:
            tokenizer = BPETokenizer.load(folder / TOKENIZER)
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(
                f"{folder / TOKENIZER} is damaged ({err}): save the tokenizer again "
                f"(tokenizer.save(path)) or train a new checkpoint"
            ) from None
        if tokenizer.vocab_size != config.vocab_size:
            raise CheckpointError(_vocab_mismatch(folder, tokenizer.vocab_size, config.vocab_size))
    state = load_train_state(folder)
    return Checkpoint(folder, model, config, tokenizer, state, meta.get("train"), meta.get("run"))


def require_tokenizer(ckpt: Checkpoint, path: str | Path, what: str = "text") -> BPETokenizer:
    """The tokenizer of ``ckpt``, loaded from ``path``; a CheckpointError naming the fix if it
    has none, since then ``what`` ("text", "a prompt") cannot become token ids."""
    if ckpt.tokenizer is None:
        raise CheckpointError(
            f"the checkpoint {path} has no {TOKENIZER}, so {what} cannot become token ids: copy "
            f"the tokenizer the model was trained with into the folder as {TOKENIZER}"
        )
    return ckpt.tokenizer


def load_model(
    path: str | Path, device: str | torch.device | None = None, which: str | None = None
) -> GPT:
    """Just the model of a checkpoint folder, in eval mode (``which``: as ``load_checkpoint``)."""
    return load_checkpoint(path, device, which).model


def load_weights(
    model: nn.Module, path: str | Path, config_source: str | Path | None = None
) -> nn.Module:
    """Load ``<path>/model.safetensors`` into ``model``, checking every name, shape and dtype.

    Tied parameters (lm_head.weight is wte.weight) are stored once and filled through their
    twin. A tensor that does not fit says which tensor, what the model expected, and the fix.
    """
    folder = _check_folder(Path(path))
    file = folder / WEIGHTS
    try:  # the header alone: names, shapes and dtypes, checked before anything is copied
        with safe_open(file, "pt") as f:
            slices = {name: f.get_slice(name) for name in f.keys()}  # noqa: SIM118
            stored = {k: (tuple(s.get_shape()), s.get_dtype()) for k, s in slices.items()}
    except (SafetensorError, OSError, RuntimeError) as err:
        raise CheckpointError(
            f"{file} is damaged ({err}): the file is truncated or corrupted, e.g. by a copy or "
            f"a save that was cut short. Restore it from a backup or train the model again"
        ) from None
    expected = model.state_dict()
    source = config_source or "the model's config"
    changes = getattr(model, "changes", [])
    built = f"{source} gives a model" + (
        f" (changed by {', '.join(c['change'] for c in changes)})" if changes else ""
    )
    fix = (
        "the config and the weights come from different models. Put back the config.json "
        "saved with these weights (a changed model, e.g. LoRA or quantized, records its "
        "changes there), or build the model the weights were trained for"
    )
    for name, (_, dtype) in stored.items():  # a dtype first: the likeliest mistake
        if name in expected and _DTYPES.get(dtype) != expected[name].dtype:
            raise CheckpointError(
                f"{file} holds {name} as {dtype}, but {built} that expects "
                f"{expected[name].dtype} there, and a cast would change the numbers silently: "
                f"{fix}"
            )
    for name, (shape, _) in stored.items():
        if name not in expected:
            raise CheckpointError(f"{file} holds {name}, but {built} with no such tensor: {fix}")
        if tuple(expected[name].shape) != shape:
            hint = _shape_hint(stored, getattr(model, "config", None))
            raise CheckpointError(
                f"{file} holds {name} of shape {shape}, but {built} with "
                f"{tuple(expected[name].shape)}{hint}: {fix}"
            )
    # Which names share memory in this model, so a tied twin counts as loaded.
    twins: dict[tuple, list[str]] = {}
    for name, t in expected.items():
        twins.setdefault((t.untyped_storage().data_ptr(), t.storage_offset()), []).append(name)
    loaded = {n for names in twins.values() if set(names) & set(stored) for n in names}
    missing = sorted(set(expected) - loaded)
    if missing:
        raise CheckpointError(
            f"{file} lacks {len(missing)} tensors the model needs ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}): it holds another architecture than "
            f"{source} describes. Use the config.json saved with these weights"
        )
    safetensors.torch.load_model(model, str(file), strict=True)  # re-ties shared tensors
    return model


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
           "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
           "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}  # fmt: skip


@_retry
def load_train_state(path: str | Path) -> TrainState | None:
    """The training state of a checkpoint folder, or None if it was saved without one."""
    folder = _check_folder(Path(path))
    has = [(folder / f).is_file() for f in (STATE_TENSORS, STATE_JSON)]
    if not any(has):
        return None
    if not all(has):
        lost = STATE_TENSORS if not has[0] else STATE_JSON
        raise CheckpointError(
            f"{folder} has {STATE_JSON if has[1] else STATE_TENSORS} but no {lost}: the "
            f"training state is incomplete, so training cannot resume exactly. Load just the "
            f"model (load_model), or train from the start"
        )
    try:
        return read_train_state(folder)
    except (SafetensorError, OSError, RuntimeError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"the training state in {folder} is damaged ({err}): the model still loads "
            f"(load_model), but resuming needs a good checkpoint; train from the start"
        ) from None


def _check_folder(path: Path) -> Path:
    if path.is_file() and path.name == WEIGHTS:
        raise CheckpointError(
            f"{path} is the weights file of a checkpoint: pass its folder, {path.parent}"
        )
    recover(path, CONFIG)
    if not path.is_dir():
        raise CheckpointError(
            f"no checkpoint at {path}: train one with `course-lib train` or pass the folder "
            f"that holds {WEIGHTS}"
        )
    for name in (WEIGHTS, CONFIG):
        if not (path / name).is_file():
            raise CheckpointError(
                f"the checkpoint {path} has no {name}: it is incomplete (a checkpoint folder "
                f"holds {WEIGHTS} and {CONFIG}). Copy the whole folder again, or train again"
            )
    return path


def read_meta(path: str | Path) -> dict:
    """A checkpoint folder's config.json, checked: "model" (GPTConfig fields), "changes" (as
    ``model.changes`` holds them; none for a checkpoint of format version 1), "train" and "run"
    (dicts or None)."""
    file = _check_folder(Path(path)) / CONFIG
    try:
        meta = json.loads(file.read_text())
        GPTConfig(**meta["model"])
        meta["changes"] = changes_from_json(meta.get("changes", []))
        meta.setdefault("train", None)
        meta.setdefault("run", None)
        return meta
    except (ValueError, KeyError, TypeError) as err:
        kind = "ValueError" if isinstance(err, CourseError) else type(err).__name__  # as it was
        raise CheckpointError(
            f"{file} is not a valid checkpoint config ({kind}: {err}): it needs "
            f'{{"model": {{...GPTConfig fields...}}}}. Put back the config.json saved with '
            f"the weights"
        ) from None


def read_config(path: str | Path) -> tuple[GPTConfig, dict | None]:
    """The model's GPTConfig and the TrainConfig dict (or None) saved in a checkpoint folder."""
    meta = read_meta(path)
    return GPTConfig(**meta["model"]), meta["train"]


def differences(saved: Any, wanted: Any, label: str, names: tuple[str, ...] = ()) -> list[str]:
    """["n_embd=32 (this model: 64)", ...]: the fields (all, or ``names``) of two dataclasses
    that differ, to explain why a checkpoint does not fit."""
    names = names or tuple(f.name for f in dataclasses.fields(saved))
    return [f"{k}={getattr(saved, k)} ({label}: {getattr(wanted, k)})"
            for k in names if getattr(saved, k) != getattr(wanted, k)]  # fmt: skip


def model_differences(meta: dict, model: GPT, label: str) -> list[str]:
    """What makes the model a checkpoint holds (``read_meta``) another than ``model``: its shape
    and its changes, each as "what the checkpoint has (label: what model has)"."""
    diffs = differences(GPTConfig(**meta["model"]), model.config, label)
    if meta["changes"] != model.changes:
        diffs.append(f"changes {meta['changes']} ({label}: {model.changes})")
    return diffs


def run_differences(meta: dict, run: dict, label: str) -> list[str]:
    """What the checkpoint's run trained with that ``run`` (``describe_run``) does not: loss,
    batches, trainable parameters. A checkpoint of format 1 counts as the default run."""
    saved = saved_run(meta["run"])
    return [f"{k} {saved.get(k)} ({label}: {v})" for k, v in run.items() if saved.get(k) != v]


def _shape_hint(stored: dict[str, tuple], config: GPTConfig | None) -> str:
    """'; the weights have n_embd=32 where it says n_embd=64' or ''."""
    found = {}
    for name in ("transformer.wte.weight", "lm_head.weight"):
        if name in stored:
            found["vocab_size"], found["n_embd"] = stored[name][0]
    if "transformer.wpe.weight" in stored:
        found["block_size"] = stored["transformer.wpe.weight"][0][0]
    layers = {k.split(".")[2] for k in stored if k.startswith("transformer.h.")}
    if layers:
        found["n_layer"] = len(layers)
    if config is None:
        return ""
    diffs = [(k, v, getattr(config, k)) for k, v in found.items() if getattr(config, k) != v]
    if not diffs:
        return ""
    return "; the weights have " + ", ".join(f"{k}={v} where it says {k}={c}" for k, v, c in diffs)


def _vocab_mismatch(path: Path, tokenizer_vocab: int, model_vocab: int) -> str:
    return (
        f"{path}: the tokenizer has {tokenizer_vocab} tokens but the model's vocab_size is "
        f"{model_vocab}; its ids would not match the embedding rows. Use the tokenizer the "
        f"model was trained with, or build the model with vocab_size={tokenizer_vocab}"
    )
