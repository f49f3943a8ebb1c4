"""Checkpoints: a trained model, its tokenizer and its training state in one folder.

Lesson 05 (pretraining) derives this.

A checkpoint is a folder of plain files, nothing pickled, so loading one runs no code:

    course/
      model.safetensors        the weights; the tied wte/lm_head matrix stored once
      config.json              {"model": GPTConfig fields, "train": TrainConfig fields or null}
      tokenizer.json           the tokenizer (Hugging Face format), when one was given
      train_state.safetensors  optimizer moments and step, RNG states (uint8), for exact resume
      train_state.json         the step, elapsed seconds, python's random state, optimizer settings

It is written atomically: everything goes into a sibling folder ``course.tmp-<pid>``, is flushed
to disk, and only then replaces ``course`` (``data._fresh_folder`` / ``data._swap_in``). A crash
while saving leaves the previous checkpoint as it was.

    >>> from course_lib.checkpoint import load_checkpoint, save_checkpoint
    >>> save_checkpoint("runs/tiny", model, tokenizer)          # doctest: +SKIP
    >>> ckpt = load_checkpoint("runs/tiny")                      # doctest: +SKIP
    >>> ckpt.model, ckpt.config, ckpt.tokenizer, ckpt.train_state  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import Tensor, nn

from course_lib.data import _fresh_folder, _swap_in, _write_atomic
from course_lib.model import GPT, GPTConfig
from course_lib.tokenizer import BPETokenizer

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER = "tokenizer.json"
STATE_TENSORS = "train_state.safetensors"
STATE_JSON = "train_state.json"
FORMAT = "course_lib checkpoint"
T = TypeVar("T")
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged or inconsistent; the message names the path and the fix."""


@dataclass
class TrainState:
    """Everything besides the weights that exact resume needs.

    step: optimizer updates done (training resumes at this step); elapsed_s: training seconds so
    far; batch_rng: the state of the generator that draws the batches (where in the data we
    are); torch_rng, cuda_rng: PyTorch's global generators (dropout masks); python_rng:
    ``random.getstate()``; optimizer: ``optimizer.state_dict()`` (AdamW's moments and step).
    """

    step: int
    elapsed_s: float = 0.0
    batch_rng: Tensor | None = None  # (5056,) uint8 for a CPU torch.Generator
    torch_rng: Tensor | None = None  # (5056,) uint8
    cuda_rng: list[Tensor] = field(default_factory=list)  # one uint8 tensor per GPU
    python_rng: tuple | None = None
    optimizer: dict | None = None

    @classmethod
    def capture(
        cls, step: int, generator: torch.Generator | None = None, elapsed_s: float = 0.0
    ) -> TrainState:
        """The random-number state of this process now, at ``step``, with the batch generator's."""
        return cls(
            step=step,
            elapsed_s=elapsed_s,
            batch_rng=None if generator is None else generator.get_state(),
            torch_rng=torch.get_rng_state(),
            cuda_rng=list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
            python_rng=random.getstate(),
        )

    def restore_rng(self, generator: torch.Generator | None = None) -> None:
        """Put every random-number generator back where ``capture`` found it."""
        if generator is not None and self.batch_rng is not None:
            generator.set_state(self.batch_rng)
        if self.torch_rng is not None:
            torch.set_rng_state(self.torch_rng)
        if self.cuda_rng and torch.cuda.is_available():
            # A checkpoint from more GPUs than this machine has restores the ones that exist.
            torch.cuda.set_rng_state_all(self.cuda_rng[: torch.cuda.device_count()])
        if self.python_rng is not None:
            random.setstate(self.python_rng)


@dataclass
class Checkpoint:
    """What ``load_checkpoint`` returns. ``train_config`` is the TrainConfig as saved, a dict
    (``TrainConfig(**ckpt.train_config)`` rebuilds it); tokenizer and train state may be None."""

    path: Path
    model: GPT
    config: GPTConfig
    tokenizer: BPETokenizer | None
    train_state: TrainState | None
    train_config: dict | None


# ---------------------------------------------------------------------------------------------
# Saving


def save_checkpoint(
    path: str | Path,
    model: GPT,
    tokenizer: BPETokenizer | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    train_state: TrainState | None = None,
    train_config: Any = None,
) -> Path:
    """Write ``model`` (and whatever else is given) as the checkpoint folder ``path``, atomically.

    ``optimizer`` is stored with ``train_state`` (which says at which step it is); pass both to
    be able to resume. ``train_config`` is a dataclass (TrainConfig) or a dict. Returns ``path``.
    """
    path = Path(path)
    config = getattr(model, "config", None)
    if not isinstance(model, nn.Module) or not isinstance(config, GPTConfig):
        raise TypeError(f"model must be a GPT (with a GPTConfig), got {type(model).__name__}")
    if tokenizer is not None and tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(_vocab_mismatch(path, tokenizer.vocab_size, config.vocab_size))
    if optimizer is not None and train_state is None:
        raise ValueError(
            "an optimizer is saved as part of the training state: pass train_state too, e.g. "
            "TrainState.capture(step, generator)"
        )
    _recover(path)
    tmp = _fresh_folder(path)
    try:
        tensors = {k: v.detach().cpu().contiguous() for k, v in _unique_state_dict(model).items()}
        _write_atomic(tmp / WEIGHTS, safetensors.torch.save(tensors))
        if tokenizer is not None:
            tokenizer.save(tmp / TOKENIZER)
            _fsync(tmp / TOKENIZER)
        if train_state is not None:
            _save_train_state(tmp, train_state, optimizer)
        if dataclasses.is_dataclass(train_config):
            train_config = dataclasses.asdict(train_config)
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "model": dataclasses.asdict(config),
            "train": train_config,
        }
        # config.json last: a folder that has it is complete (what _recover relies on).
        _write_atomic(tmp / CONFIG, _json(meta))
        _fsync(tmp)  # the folder's entries, before it takes the checkpoint's name
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the old checkpoint was never touched
        raise
    _swap_in(tmp, path)
    _fsync(path.parent)
    for stale in [*path.parent.glob(f"{path.name}.tmp-*"), *path.parent.glob(f"{path.name}.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)  # leftovers of saves killed before this one
    return path


def _unique_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The state dict with each shared tensor once: the tied lm_head.weight is wte.weight.

    safetensors refuses two names for one memory; loading re-ties them (see ``load_weights``).
    """
    out, seen = {}, set()
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
        if key not in seen:
            seen.add(key)
            out[name] = t
    return out


def _save_train_state(
    folder: Path, state: TrainState, optimizer: torch.optim.Optimizer | None
) -> None:
    # Tensors go to safetensors (exact bytes, no pickle); the rest is small and goes to JSON.
    tensors: dict[str, Tensor] = {}
    if state.batch_rng is not None:
        tensors["rng.batches"] = state.batch_rng
    if state.torch_rng is not None:
        tensors["rng.torch"] = state.torch_rng
    for i, s in enumerate(state.cuda_rng):
        tensors[f"rng.cuda.{i}"] = s
    sd = optimizer.state_dict() if optimizer is not None else state.optimizer
    opt_json = None
    if sd is not None:
        other: dict[str, dict] = {}
        for idx, s in sd["state"].items():
            for key, value in s.items():
                if isinstance(value, Tensor):
                    tensors[f"optimizer.{idx}.{key}"] = value
                else:
                    other.setdefault(str(idx), {})[key] = value
        opt_json = {"param_groups": sd["param_groups"], "state": other}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    _write_atomic(folder / STATE_TENSORS, safetensors.torch.save(tensors))
    py = state.python_rng
    meta = {
        "step": state.step,
        "elapsed_s": state.elapsed_s,
        "cuda_devices": len(state.cuda_rng),
        "python_rng": None if py is None else [py[0], list(py[1]), py[2]],
        "optimizer": opt_json,
    }
    _write_atomic(folder / STATE_JSON, _json(meta))


def _json(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, default=str).encode()  # default=str: Path values


def _fsync(path: Path) -> None:
    """Flush a file, or a folder's list of entries, to the disk (POSIX; elsewhere a no-op)."""
    if os.name != "posix":  # Windows cannot open a folder, nor fsync a read-only handle
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _recover(path: Path) -> None:
    """Finish a swap that a crash cut short.

    ``_swap_in`` renames the old folder to ``<name>.old-<pid>``, deletes it, then renames the
    new one from ``<name>.tmp-<pid>`` to ``<name>``. Killed in between, ``<name>`` is missing
    and the new folder is complete (it has config.json, written last), so it takes its place.
    """
    siblings = [*path.parent.glob(f"{path.name}.tmp-*"), *path.parent.glob(f"{path.name}.old-*")]
    if path.exists() or not siblings:
        return
    # A save running right now is between its renames for a moment: let it finish first,
    # rather than race it (it would then find its folder gone and fail).
    deadline = time.monotonic() + 1.0
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    complete = [d for d in path.parent.glob(f"{path.name}.tmp-*") if (d / CONFIG).is_file()]
    if path.exists() or not complete:
        return
    newest = max(complete, key=lambda d: (d / CONFIG).stat().st_mtime_ns)
    with contextlib.suppress(OSError):  # another reader may be recovering it too
        os.replace(newest, path)
    for old in path.parent.glob(f"{path.name}.old-*"):
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Loading


def checkpoint_exists(path: str | Path) -> bool:
    """Whether ``path`` holds a checkpoint (after finishing a swap a crash interrupted)."""
    path = Path(path)
    _recover(path)
    return (path / WEIGHTS).is_file()


def _retry_if_swapped(load: Callable[..., T]) -> Callable[..., T]:
    """Read again when a save swapped the folder in while we read it (training runs while a
    notebook loads its latest checkpoint): files vanish under the reader for a moment."""

    @functools.wraps(load)
    def wrapper(path: str | Path, *args: Any, **kwargs: Any) -> T:
        for attempt in range(3):
            before = _identity(Path(path))
            try:
                result = load(path, *args, **kwargs)
            except (CheckpointError, OSError, RuntimeError):
                if attempt == 2 or _identity(Path(path)) == before:
                    raise  # nothing changed under us: the error is real
                continue
            if attempt == 2 or _identity(Path(path)) == before:
                return result  # read from one folder, start to end
        raise AssertionError("unreachable")

    return wrapper


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


@_retry_if_swapped
def load_checkpoint(path: str | Path, device: str | torch.device | None = None) -> Checkpoint:
    """Read the checkpoint folder ``path``: the model (in eval mode), its config, tokenizer and
    training state. ``device=None`` keeps the weights on the CPU, where any device can take
    them (``model.to(get_device())`` moves them). Never unpickles: safetensors and JSON only.
    """
    path = Path(path)
    folder = _check_folder(path)
    config, train_config = read_config(folder)
    model = GPT(config)
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
    return Checkpoint(folder, model, config, tokenizer, load_train_state(folder), train_config)


def load_model(path: str | Path, device: str | torch.device | None = None) -> GPT:
    """Just the model of a checkpoint folder, in eval mode."""
    return load_checkpoint(path, device).model


def load_weights(
    model: nn.Module, path: str | Path, config_source: str | Path | None = None
) -> nn.Module:
    """Load ``<path>/model.safetensors`` into ``model``, checking every name and shape.

    Tied parameters (lm_head.weight is wte.weight) are stored once and filled through their
    twin. A shape that does not fit says which config fields differ from the weights.
    """
    folder = _check_folder(Path(path))
    file = folder / WEIGHTS
    try:
        tensors = safetensors.torch.load_file(file)
    except (SafetensorError, OSError, RuntimeError) as err:
        raise CheckpointError(
            f"{file} is damaged ({err}): the file is truncated or corrupted, e.g. by a copy or "
            f"a save that was cut short. Restore it from a backup or train the model again"
        ) from None
    expected = model.state_dict()
    # Which names share memory in this model, so a tied twin counts as loaded.
    twins: dict[tuple, list[str]] = {}
    for name, t in expected.items():
        twins.setdefault((t.untyped_storage().data_ptr(), t.storage_offset()), []).append(name)
    loaded = {n for names in twins.values() if set(names) & set(tensors) for n in names}
    source = config_source or "the model's config"
    for name, t in tensors.items():
        if name not in expected or expected[name].shape != t.shape:
            want = tuple(expected[name].shape) if name in expected else "no such parameter"
            raise CheckpointError(
                f"{file} holds {name} of shape {tuple(t.shape)}, but {source} gives a model "
                f"with {want}{_shape_hint(tensors, getattr(model, 'config', None))}: the config "
                f"and the weights come from different models. Put back the config.json saved "
                f"with these weights, or build the model with the config they were trained with"
            )
    missing = sorted(set(expected) - loaded)
    if missing:
        raise CheckpointError(
            f"{file} lacks {len(missing)} tensors the model needs ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}): it holds another architecture than "
            f"{source} describes. Use the config.json saved with these weights"
        )
    model.load_state_dict(tensors, strict=False)  # strict=False: tied twins are not in the file
    return model


@_retry_if_swapped
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
        tensors = safetensors.torch.load_file(folder / STATE_TENSORS)
        meta = json.loads((folder / STATE_JSON).read_text())
        step = int(meta["step"])
    except (SafetensorError, OSError, RuntimeError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"the training state in {folder} is damaged ({err}): the model still loads "
            f"(load_model), but resuming needs a good checkpoint; train from the start"
        ) from None
    py = meta.get("python_rng")
    state = TrainState(
        step=step,
        elapsed_s=float(meta.get("elapsed_s", 0.0)),
        batch_rng=tensors.get("rng.batches"),
        torch_rng=tensors.get("rng.torch"),
        cuda_rng=[tensors[f"rng.cuda.{i}"] for i in range(meta.get("cuda_devices", 0))],
        python_rng=None if py is None else (py[0], tuple(py[1]), py[2]),
    )
    opt = meta.get("optimizer")
    if opt is not None:
        opt_state: dict[int, dict] = {}
        for name, t in tensors.items():
            if name.startswith("optimizer."):
                _, idx, key = name.split(".", 2)
                opt_state.setdefault(int(idx), {})[key] = t
        for idx, values in opt["state"].items():
            opt_state.setdefault(int(idx), {}).update(values)
        groups = [
            {k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in opt["param_groups"]
        ]
        state.optimizer = {"state": opt_state, "param_groups": groups}
    return state


def _check_folder(path: Path) -> Path:
    if path.is_file() and path.name == WEIGHTS:
        raise CheckpointError(
            f"{path} is the weights file of a checkpoint: pass its folder, {path.parent}"
        )
    _recover(path)
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


def read_config(path: str | Path) -> tuple[GPTConfig, dict | None]:
    """The model's GPTConfig and the TrainConfig dict (or None) saved in a checkpoint folder."""
    file = _check_folder(Path(path)) / CONFIG
    try:
        meta = json.loads(file.read_text())
        return GPTConfig(**meta["model"]), meta.get("train")
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"{file} is not a valid checkpoint config ({type(err).__name__}: {err}): it needs "
            f'{{"model": {{...GPTConfig fields...}}}}. Put back the config.json saved with '
            f"the weights"
        ) from None


def _shape_hint(tensors: dict[str, Tensor], config: GPTConfig | None) -> str:
    """'; the weights have n_embd=32 where the config says n_embd=64' or ''."""
    found = {}
    if "transformer.wte.weight" in tensors:
        found["vocab_size"], found["n_embd"] = tensors["transformer.wte.weight"].shape
    if "transformer.wpe.weight" in tensors:
        found["block_size"] = tensors["transformer.wpe.weight"].shape[0]
    layers = {k.split(".")[2] for k in tensors if k.startswith("transformer.h.")}
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
