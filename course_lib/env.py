"""Where things live, which device runs the model, and seeding. Lesson 00 introduces it.

>>> from course_lib.env import checkpoint_dir, data_dir, get_device
>>> checkpoint_dir() == data_dir() / "checkpoints"
True
>>> get_device().type in ("cuda", "mps", "cpu")     # cuda, then mps, then cpu
True
>>> get_device("cpu")                               # or the one you ask for
device(type='cpu')
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import sys
from importlib import metadata
from pathlib import Path

import torch

# The repository root when course_lib is used from a checkout (the usual, editable install).
_REPO = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """The folder for the corpus and its prepared files (git-ignored).

    ``$COURSE_LIB_DATA`` if set, else ``data/`` in the course checkout, else ``./data``.
    """
    if os.environ.get("COURSE_LIB_DATA"):
        return Path(os.environ["COURSE_LIB_DATA"]).expanduser().resolve()
    if (_REPO / "pyproject.toml").is_file() and (_REPO / "notebooks").is_dir():
        return _REPO / "data"
    return Path.cwd() / "data"


def checkpoint_dir() -> Path:
    """The folder for model checkpoints (git-ignored): ``<data_dir>/checkpoints``."""
    return data_dir() / "checkpoints"


def get_device(prefer: str | None = None) -> torch.device:
    """The device to train on: ``prefer`` if given, else cuda, then mps, then cpu."""
    if prefer:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, PyTorch (CPU and GPU) and return a fresh ``torch.Generator`` seeded the same.

    Passing that generator explicitly (to batch samplers, to ``generate``) keeps results
    independent of how many random numbers other code drew before.
    """
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)


PACKAGES = ("torch", "tokenizers", "transformers", "matplotlib", "bertviz", "jupyterlab", "nbval")


def versions() -> dict[str, str]:
    """Versions of Python and the course's main packages (``"missing"`` if not installed)."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "missing"
    return found


def environment_report() -> dict[str, str]:
    """Everything ``course-lib info`` and Lesson 00 print about this machine."""
    report = versions()
    report["platform"] = f"{platform.system()} {platform.machine()}"
    report["device"] = str(get_device())
    report["torch threads"] = str(torch.get_num_threads())
    report["cpu cores"] = str(os.cpu_count())
    report["executable"] = sys.executable
    return report


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 matmuls on GPUs (fast, and float32's range: no loss scaling needed); CPUs keep
    float32, which is exactly reproducible."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
