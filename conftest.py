"""Lessons 06 to 09 are tested under CPU kernels other than this machine's own.

Floating-point results differ in the last bits between CPUs (AVX2 or AVX-512, FMA or not), and
training grows those bits. The stored notebook outputs come from one machine; a learner's or a
teacher's differs. So that the suite itself catches an output compared strictly that is not
the same everywhere, the lessons that use trained weights run here with PyTorch's, MKL's and
oneDNN's kernels forced one instruction set lower than this CPU's (AVX-512 -> AVX2, AVX2 ->
no SIMD): their own training runs and every evaluation then round as another machine would.
Lesson 05 trains the course model with this machine's own kernels, as a learner's would.

Forcing costs time only where nothing is lower than AVX2 but no SIMD (PyTorch's plain C++
kernels: lessons 06 to 09 about 1.4 times slower). So a notebook runs forced only when its
outputs were stored under this machine's own capability (``course.py --save`` records it in the
notebook's metadata, ``course.cpu_capability``): stored under another, its outputs already come
from other kernels than this machine's, and the native run is the test, at no cost.

``COURSE_OTHER_KERNELS=0`` runs every lesson with this machine's own kernels.

The ``>>>`` examples in course_lib's docstrings run as tests too (``--doctest-modules``), each in
a temporary folder of its own, so that an example that saves a file saves it there.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import pytest
import torch

OTHER_KERNEL_LESSONS = ("06", "07", "08", "09")

OWN = torch.backends.cpu.get_cpu_capability()  # this CPU's, or what ATEN_CPU_CAPABILITY forces
# One instruction set lower than the CPU's own, for each library that picks its kernels at run
# time: ATen (PyTorch's own ops), MKL (matmuls), oneDNN.
LOWER = {
    "AVX512": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
               "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "AVX2": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "AVX",
             "ONEDNN_MAX_CPU_ISA": "AVX"},
}  # fmt: skip


def other_kernels() -> dict[str, str]:
    """The environment that forces other kernels ({} where there is nothing lower, or when
    ``COURSE_OTHER_KERNELS=0``)."""
    if os.environ.get("COURSE_OTHER_KERNELS", "1") == "0":
        return {}
    return LOWER.get(OWN, {})


OTHER = other_kernels()
NATIVE = {name: os.environ.get(name) for name in OTHER}


@functools.cache
def stored_with(notebook: Path) -> str | None:
    """The CPU capability a notebook's outputs were stored under (None: not recorded)."""
    meta = json.loads(notebook.read_text(encoding="utf-8")).get("metadata", {})
    return meta.get("course", {}).get("cpu_capability")


def runs_forced(notebook: Path) -> bool:
    """Whether a notebook runs under the other kernels (see the module's docstring)."""
    lesson = notebook.suffix == ".ipynb" and notebook.name[:2] in OTHER_KERNEL_LESSONS
    return lesson and bool(OTHER) and stored_with(notebook) in (None, OWN)


def pytest_report_header(config) -> str:
    if not OTHER:
        return f"CPU kernels: {OWN} for every lesson (nothing lower to force, or switched off)"
    forced = " ".join(f"{k}={v}" for k, v in OTHER.items())
    return (
        f"CPU kernels: {OWN}; lessons {', '.join(OTHER_KERNEL_LESSONS)} under {forced} where "
        f"their outputs were stored under {OWN}, natively where under other kernels"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item) -> None:
    """Before a notebook's kernel starts (nbval starts one per notebook, in its first cell's
    set-up), set or restore the environment it inherits."""
    forced = runs_forced(item.path)
    for name, value in OTHER.items():
        if forced:
            os.environ[name] = value
        elif NATIVE[name] is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = NATIVE[name]


@pytest.fixture(autouse=True)
def _docstring_examples_in_a_temporary_folder(request: pytest.FixtureRequest) -> None:
    """A docstring example runs in a fresh temporary folder (``tok.save("tokenizer.json")``
    writes there, not into the checkout)."""
    if isinstance(request.node, pytest.DoctestItem):
        request.getfixturevalue("monkeypatch").chdir(request.getfixturevalue("tmp_path"))
