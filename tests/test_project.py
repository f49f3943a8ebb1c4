"""The project keeps its promises: one set of pins, the README's commands, a working CLI."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _pyproject_requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["dependencies"] + project["optional-dependencies"]["dev"]


def test_environment_yml_installs_the_same_pins_as_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "python=3.11" in env["dependencies"]
    assert sorted(r for r in pip if r != "-e .") == sorted(_pyproject_requirements())
    assert "-e ." in pip


def test_torch_is_pinned_to_the_cpu_wheel_version():
    assert "torch==2.13.0" in _pyproject_requirements()
    assert all("==" in r for r in _pyproject_requirements()), "every requirement is pinned"


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"^python3 course\.py +# set up, then open JupyterLab", readme, re.M)
    assert re.search(r"^python3 course\.py test +# set up, then lint and run", readme, re.M)
    assert "python3 course.py --headless" in readme
    assert re.search(r"^exec python3 course.py test$", (ROOT / ".ci/run").read_text(), re.M)


def test_hosted_ci_workflow_runs_the_same_command():
    workflow = (ROOT / ".github/workflows/ci.yml").read_text()
    assert "python3 course.py test" in workflow


def test_cli_help_lists_the_commands():
    out = subprocess.run(
        [sys.executable, "-m", "course_lib", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "info" in out and "prepare" in out


def test_cli_info_reports_device_and_corpus(splits):
    out = subprocess.run(
        [sys.executable, "-m", "course_lib", "info"], capture_output=True, text=True, check=True
    ).stdout
    assert re.search(r"device\s+(cpu|cuda|mps)", out)
    assert "train 4,380,798 chars, val 469,510 chars, finetune 206,890 chars" in out


def test_cli_prepare_with_a_bad_tarball_exits_2_with_the_reason(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a tarball")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "course_lib",
            "prepare",
            "--data-dir",
            str(tmp_path / "d"),
            "--tarball",
            str(bad),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "truncated" in proc.stderr and "Traceback" not in proc.stderr


def test_console_script_is_installed():
    exe = Path(sys.executable).parent / "course-lib"
    assert exe.exists(), "pip install -e . should install the course-lib command"
    assert "prepare" in subprocess.run([exe, "--help"], capture_output=True, text=True).stdout
