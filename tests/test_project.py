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


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "course_lib", *args], capture_output=True, text=True
    )


def test_cli_tokenizer_train_encode_decode_round_trip(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat, the end. " * 200, encoding="utf-8")
    out = tmp_path / "tok.json"
    assert _cli("tokenizer", "train", "--text", str(text), "--vocab-size", "280",
                "--out", str(out)).returncode == 0  # fmt: skip
    ids = _cli("tokenizer", "encode", "--tokenizer", str(out), "the cat").stdout.split()
    assert len(ids) < len("the cat")
    decoded = _cli("tokenizer", "decode", "--tokenizer", str(out), *ids).stdout
    assert decoded == "the cat\n"


def test_cli_tokenizer_encode_uses_the_course_tokenizer_by_default(splits):
    ids = _cli("tokenizer", "encode", "To be, or not to be").stdout.split()
    assert 0 < len(ids) < 19 and all(0 <= int(i) < 2048 for i in ids)


def test_cli_tokenizer_errors_exit_2_with_the_reason(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    proc = _cli("tokenizer", "train", "--text", str(empty), "--vocab-size", "300", "--out", "x")
    assert proc.returncode == 2 and "cannot train on empty text" in proc.stderr
    proc = _cli("tokenizer", "decode", "5000")
    assert (
        proc.returncode == 2 and "token id 5000 is not in the vocabulary (size 2048)" in proc.stderr
    )
