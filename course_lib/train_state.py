"""What exact resume needs besides the weights: the training state, and what the run trains with.

Lesson 05 (checkpoints and exact resume) derives this; ``course_lib.checkpoint`` stores it in
every checkpoint that training writes:

    train_state.safetensors  optimizer moments and step, RNG states (uint8)
    train_state.json         the step, elapsed seconds, python's random state, optimizer settings

The run record (``describe_run``) says which loss, which batches and which parameters a run
trains with, so that a resume, or ``load_or_train``, never mistakes one kind of run for another.
On resume, the metrics log is cut back to the checkpoint's step (``rewind_log``).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor, nn

from course_lib.files import write_atomic

STATE_TENSORS = "train_state.safetensors"
STATE_JSON = "train_state.json"


@dataclass
class TrainState:
    """Everything besides the weights that exact resume needs.

    step: optimizer updates done (training resumes at this step); elapsed_s: training seconds so
    far; batch_rng: the state of the generator that draws the batches (where in the data we
    are); torch_rng, cuda_rng: PyTorch's global generators (dropout masks); python_rng:
    ``random.getstate()``; optimizer: ``optimizer.state_dict()`` (AdamW's moments and step);
    best_step, best_val_loss: the evaluation of lowest validation loss so far (keep_best,
    patience), None before the first.
    """

    step: int
    elapsed_s: float = 0.0
    batch_rng: Tensor | None = None  # (5056,) uint8 for a CPU torch.Generator
    torch_rng: Tensor | None = None  # (5056,) uint8
    cuda_rng: list[Tensor] = field(default_factory=list)  # one uint8 tensor per GPU
    python_rng: tuple | None = None
    optimizer: dict | None = None
    best_step: int | None = None
    best_val_loss: float | None = None

    @classmethod
    def capture(
        cls,
        step: int,
        generator: torch.Generator | None = None,
        elapsed_s: float = 0.0,
        best_step: int | None = None,
        best_val_loss: float | None = None,
    ) -> TrainState:
        """The random-number state of this process now, at ``step``, with the batch generator's."""
        return cls(
            best_step=best_step,
            best_val_loss=best_val_loss,
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


def save_train_state(
    folder: Path, state: TrainState, optimizer: torch.optim.Optimizer | None = None
) -> None:
    """Write ``state`` (with ``optimizer``'s state, if given) as the two train_state files."""
    # safetensors holds flat {name: tensor} only, so the optimizer's nested state is split: its
    # tensors go there as "optimizer.<param index>.<key>", everything else to JSON. Exact bytes,
    # and nothing to unpickle.
    tensors = {"rng.batches": state.batch_rng, "rng.torch": state.torch_rng}
    tensors |= {f"rng.cuda.{i}": s for i, s in enumerate(state.cuda_rng)}
    sd = optimizer.state_dict() if optimizer is not None else state.optimizer
    opt_json = None
    if sd is not None:
        other: dict[str, dict] = {}
        for idx, values in sd["state"].items():
            for key, value in values.items():
                if isinstance(value, Tensor):
                    tensors[f"optimizer.{idx}.{key}"] = value
                else:
                    other.setdefault(str(idx), {})[key] = value
        opt_json = {"param_groups": sd["param_groups"], "state": other}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items() if v is not None}
    safetensors.torch.save_file(tensors, str(folder / STATE_TENSORS))
    py = state.python_rng
    meta = {
        "step": state.step,
        "elapsed_s": state.elapsed_s,
        "cuda_devices": len(state.cuda_rng),
        "python_rng": None if py is None else [py[0], list(py[1]), py[2]],
        "optimizer": opt_json,
        "best_step": state.best_step,
        "best_val_loss": state.best_val_loss,
    }
    (folder / STATE_JSON).write_text(json.dumps(meta, indent=1))


def read_train_state(folder: Path) -> TrainState:
    """Read the two train_state files of ``folder`` (ValueError, OSError when damaged)."""
    tensors = safetensors.torch.load_file(folder / STATE_TENSORS)
    meta = json.loads((folder / STATE_JSON).read_text())
    py = meta.get("python_rng")
    state = TrainState(
        step=int(meta["step"]),
        elapsed_s=float(meta.get("elapsed_s", 0.0)),
        batch_rng=tensors.get("rng.batches"),
        torch_rng=tensors.get("rng.torch"),
        cuda_rng=[tensors[f"rng.cuda.{i}"] for i in range(meta.get("cuda_devices", 0))],
        python_rng=None if py is None else (py[0], tuple(py[1]), py[2]),
        best_step=meta.get("best_step"),
        best_val_loss=meta.get("best_val_loss"),
    )
    opt = meta.get("optimizer")
    if opt is not None:  # put the split optimizer state back together (see save_train_state)
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


def describe_run(model: nn.Module, data: dict[str, Any], loss_fn: Any) -> dict:
    """What a run trains with, saved in its checkpoints: the loss, the batches of each split,
    and which parameters train ("all", or their names)."""
    names = [n for n, _ in model.named_parameters()]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    return {
        "loss": _qualified_name(loss_fn),
        "batches": {
            s: "tokens" if isinstance(data[s], Tensor) else _qualified_name(data[s])
            for s in ("train", "val")
        },
        "trainable": "all" if trainable == names else trainable,
    }


# What a checkpoint of format version 1 (no record of its run) was trained with.
DEFAULT_RUN = {
    "loss": "course_lib.train.next_token_loss",
    "batches": {"train": "tokens", "val": "tokens"},
    "trainable": "all",
}


# Functions that moved to another module after runs were saved naming them, old -> new prefix:
# course_lib.genre's text-to-text half became course_lib.genre_text (Lesson 07's cached runs).
MOVED = {"course_lib.genre.text_batches.": "course_lib.genre_text.text_batches."}


def saved_run(run: dict | None) -> dict:
    """A checkpoint's run record as ``describe_run`` names things today: ``DEFAULT_RUN`` for a
    checkpoint of format version 1 (none), and each function that has moved since (``MOVED``)
    under its name now, so that a run saved before the move is still the same run."""

    def now(name: Any) -> Any:
        for old, new in MOVED.items():
            if isinstance(name, str) and name.startswith(old):
                return new + name[len(old) :]
        return name

    run = run or DEFAULT_RUN
    batches = run.get("batches")
    if isinstance(batches, dict):
        batches = {split: now(name) for split, name in batches.items()}
    return {**run, "loss": now(run.get("loss")), "batches": batches}


def _qualified_name(fn: Any) -> str:
    name = getattr(fn, "__qualname__", type(fn).__qualname__)
    return f"{getattr(fn, '__module__', type(fn).__module__)}.{name}"


def rewind_log(path: Path, start: int) -> list[dict]:
    """Keep the metrics of steps before ``start`` (all that a resumed run does not redo).

    A line cut short by a crash is dropped, and so are the steps done after the checkpoint,
    which the resumed run does again: the log then holds each step once.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = []
    if start > 0 and path.is_file():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("step", start) < start:
                kept.append(entry)
    write_atomic(path, "".join(json.dumps(e) + "\n" for e in kept).encode())
    return kept
