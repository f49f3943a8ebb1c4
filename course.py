#!/usr/bin/env python3
"""Set up the course and run it, or test it. Needs only Python 3.11 and pip.

    python3 course.py                 set up, then open JupyterLab on notebooks/
    python3 course.py --headless      set up, then run every notebook in order, timing each
    python3 course.py test            set up, then lint and run the whole suite (pytest + nbval)

Setting up creates ``.venv/``, installs ``course_lib`` and its pinned dependencies into it, and
prepares the corpus under ``data/``. Each step is skipped when already done, so a second run
starts at once. Extra arguments after ``test`` go to pytest (``python3 course.py test -x -k data``),
after ``lab`` to JupyterLab (``python3 course.py lab --ip 0.0.0.0``, e.g. in a container). Run as
root, JupyterLab gets ``--allow-root``: containers and cloud notebooks often run as root.
Maintainers re-store notebook outputs with ``python3 course.py --headless --save``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / "course-setup.txt"
NOTEBOOKS = ROOT / "notebooks"
# JupyterLab settings of the course, as defaults a learner can still change in Settings: no
# "get notified about official Jupyter news?" pop-up, and no request to the news feed (the course
# runs offline). A settings-overrides file of JupyterLab's own, in .venv's JupyterLab.
LAB_SETTINGS = VENV / "share" / "jupyter" / "lab" / "settings" / "overrides.d" / "gpt-course.json"
LAB_OVERRIDES = {"@jupyterlab/apputils-extension:notification": {"fetchNews": "false"}}


def run(*cmd: str | Path, **kw) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, **kw)


def setup() -> None:
    """Create .venv, install the course into it, prepare the corpus; skip what is done."""
    if sys.version_info[:2] != (3, 11):
        sys.exit(
            f"course.py: the course needs Python 3.11 (its pinned PyTorch 2.13.0 wheel), "
            f"this is {sys.version.split()[0]}. Run it with python3.11, or create a conda "
            f"environment from environment.yml."
        )
    if not PYTHON.exists():
        run(sys.executable, "-m", "venv", VENV)
    # Reinstall only when the project's requirements changed since the last install.
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not STAMP.exists() or STAMP.read_text().strip() != wanted:
        quiet = ["--progress-bar", "off"] if os.environ.get("CI") else []
        run(PYTHON, "-m", "pip", "install", "--disable-pip-version-check", *quiet, "-e", ".[dev]")
        STAMP.write_text(wanted + "\n")
    run(PYTHON, "-m", "course_lib", "prepare")


def lab_command(extra: list[str]) -> list[str | Path]:
    """JupyterLab on notebooks/ (``extra``: its options). As root it needs ``--allow-root``."""
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0  # Windows has no geteuid
    allow_root = ["--allow-root"] if as_root else []
    return [PYTHON, "-m", "jupyter", "lab", *allow_root, *extra, NOTEBOOKS]


def write_lab_settings() -> None:
    text = json.dumps(LAB_OVERRIDES, indent=2) + "\n"
    if not LAB_SETTINGS.is_file() or LAB_SETTINGS.read_text() != text:
        LAB_SETTINGS.parent.mkdir(parents=True, exist_ok=True)
        LAB_SETTINGS.write_text(text)


def notebooks(only: list[str] | None = None) -> list[Path]:
    found = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    return [nb for nb in found if not only or any(nb.name.startswith(o) for o in only)]


def _coalesce_streams(outputs: list) -> list:
    merged: list = []
    for out in outputs:
        prev = merged[-1] if merged else None
        if (
            out.output_type == "stream"
            and prev
            and prev.output_type == "stream"
            and (prev.name == out.name)
        ):
            prev.text += out.text
        else:
            merged.append(out)
    return merged


def run_notebooks(only: list[str], save: bool) -> None:
    """Execute notebooks top to bottom in fresh kernels (inside .venv), timing each."""
    import nbformat
    import torch
    from nbclient import NotebookClient

    total = time.perf_counter()
    for path in notebooks(only):
        nb = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        print(f"running {path.name} ...", end=" ", flush=True)
        NotebookClient(
            nb,
            timeout=1800,
            kernel_name="python3",
            resources={"metadata": {"path": str(NOTEBOOKS)}},
        ).execute()
        print(f"{time.perf_counter() - start:6.1f} s", flush=True)
        if save:
            # Which CPU kernels rounded these outputs: the suite re-runs the lessons that use
            # trained weights under other kernels than those (conftest.py).
            nb.metadata["course"] = {"cpu_capability": torch.backends.cpu.get_cpu_capability()}
            for cell in nb.cells:  # one output per stream, however the kernel chunked it
                if cell.cell_type == "code":
                    cell.outputs = _coalesce_streams(cell.outputs)
            nbformat.write(nb, path)
    print(f"all notebooks ran in {time.perf_counter() - total:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", nargs="?", choices=["lab", "test"], default="lab")
    parser.add_argument(
        "--headless",
        action="store_true",
        help="run every notebook in order instead of opening JupyterLab",
    )
    parser.add_argument(
        "--only",
        nargs="*",
        default=[],
        metavar="NN",
        help="with --headless: only notebooks whose name starts with these",
    )
    parser.add_argument(
        "--save",
        action="store_true",
        help="with --headless: store the outputs in the notebooks (maintainers)",
    )
    parser.add_argument("--in-venv", action="store_true", help=argparse.SUPPRESS)
    args, extra = parser.parse_known_args()

    if args.in_venv:  # second stage: running inside .venv, where nbclient is installed
        run_notebooks(args.only, args.save)
        return
    if extra and args.command != "test" and args.headless:
        parser.error(f"unrecognised arguments: {' '.join(extra)}")
    if (args.only or args.save) and not args.headless:  # they choose and store headless runs
        used = " and ".join(o for o, on in (("--only", args.only), ("--save", args.save)) if on)
        example = "python3 course.py --headless --only 05 --save"
        parser.error(f"{used}: only with --headless, which runs the notebooks without "
                     f"JupyterLab (e.g. {example})")  # fmt: skip
    setup()
    if args.command == "test":
        # Chromium for the browser tests of the attention views (they skip, saying why, without)
        if os.name != "nt":
            run("bash", ROOT / "scripts" / "install_browser.sh")
        run(PYTHON, "-m", "ruff", "check", ".")
        run(PYTHON, "-m", "ruff", "format", "--check", ".")
        sys.exit(subprocess.run([str(PYTHON), "-m", "pytest", *extra], cwd=ROOT).returncode)
    if args.headless:
        only = ["--only", *args.only] if args.only else []
        run(PYTHON, __file__, "--in-venv", *only, *(["--save"] if args.save else []))
        return
    run(PYTHON, "-m", "jupyter", "trust", *notebooks())
    write_lab_settings()
    run(*lab_command(extra))


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as err:
        sys.exit(f"course.py: a step failed (exit code {err.returncode}); see its output above.")
    except KeyboardInterrupt:
        sys.exit(130)
