"""The project keeps its promises: one set of pins, the README's commands, a working CLI."""

import argparse
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from course_lib import cli

ROOT = Path(__file__).resolve().parent.parent
TORCH = "2.13.0"


def _pyproject_requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["dependencies"] + project["optional-dependencies"]["dev"]


def _environment_yml() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def _environment_yml_pip() -> list[str]:
    return next(d["pip"] for d in _environment_yml()["dependencies"] if isinstance(d, dict))


def test_environment_yml_installs_the_same_pins_as_pyproject():
    pip = _environment_yml_pip()
    assert "python=3.11" in _environment_yml()["dependencies"]
    assert sorted(r for r in pip if r != "-e .") == sorted(_pyproject_requirements())
    assert "-e ." in pip


def test_every_requirement_is_pinned_to_one_version():
    assert all("==" in r for r in _pyproject_requirements())


def test_torch_is_pinned_to_the_cpu_wheel_version():
    """pyproject.toml and environment.yml pin torch 2.13.0; the torch installed and imported is
    that version (``2.13.0`` or ``2.13.0+cpu``) and, unless it can use a GPU here, a CPU build: no
    CUDA in it, no ``nvidia-*`` CUDA libraries beside it (PyPI's Linux wheel pulls gigabytes)."""
    import torch

    assert f"torch=={TORCH}" in _pyproject_requirements()
    assert f"torch=={TORCH}" in _environment_yml_pip()
    installed = metadata.version("torch")
    assert torch.__version__ == installed, "the torch imported is the one pip installed"
    version, _, local = installed.partition("+")
    assert version == TORCH
    nvidia = sorted(
        name
        for d in metadata.distributions()
        if (name := d.metadata["Name"] or "").lower().startswith("nvidia-")
    )
    gpu_build = (
        local not in ("", "cpu")  # +cu128, +rocm6.4, ...
        or torch.version.cuda is not None
        or getattr(torch.version, "hip", None) is not None
        or bool(nvidia)
    )
    # On purpose, a machine whose GPU torch can use may keep a GPU build: the README promises
    # that a GPU is used when present, which needs one. Anywhere else it is gigabytes for nothing.
    assert not gpu_build or torch.cuda.is_available(), (
        f"torch {installed} is a GPU build (CUDA {torch.version.cuda}, {len(nvidia)} nvidia-* "
        f"packages) on a machine without a GPU. For the CPU wheel: rm -rf .venv && "
        f"PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu python3 course.py"
    )


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"^python3 course\.py +# set up, then open JupyterLab", readme, re.M)
    assert re.search(r"^python3 course\.py test +# set up, then lint and run", readme, re.M)
    assert "python3 course.py --headless" in readme
    assert re.search(r"^exec python3 course.py test$", (ROOT / ".ci/run").read_text(), re.M)


def test_hosted_ci_workflow_runs_the_same_command():
    workflow = (ROOT / ".github/workflows/ci.yml").read_text()
    assert "python3 course.py test" in workflow


def test_the_suite_runs_the_docstring_examples_of_course_lib():
    """Every >>> example in course_lib is a test (--doctest-modules), none run again by hand."""
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "course_lib" in options["testpaths"]
    assert "--doctest-modules" in options["addopts"].split()
    others = [p for p in (ROOT / "tests").glob("*.py") if p.name != Path(__file__).name]
    assert [p.name for p in others if "doctest.testmod" in p.read_text()] == []


def _cli_commands() -> dict[str, str]:
    """The subcommands of ``course-lib`` and their help, as its parser defines them.

    argparse keeps them in its subparsers action (``choices``; the help in ``_choices_actions``).
    """
    (sub,) = (a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in sub._choices_actions}
    return {name: helps[name] for name in sub.choices}


def test_cli_has_the_commands_of_the_lessons():
    assert {"info", "prepare", "tokenizer", "train", "sample"} <= set(_cli_commands())


def test_cli_help_lists_the_commands():
    """``course-lib --help`` names every command with its help text."""
    out = subprocess.run(
        [sys.executable, "-m", "course_lib", "--help"], capture_output=True, text=True, check=True
    ).stdout
    flat = " ".join(out.split())  # argparse wraps the help to the terminal's width
    for name, help_text in _cli_commands().items():
        assert f" {name} {help_text}" in flat, name


def test_cli_module_docstring_documents_every_command():
    for name in _cli_commands():
        assert re.search(rf"^ +course-lib {name}\b", cli.__doc__, re.M), name


def test_readme_command_line_section_shows_every_command():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## The command line\n", 1)[1].split("\n## ", 1)[0]
    for name in _cli_commands():
        assert re.search(rf"^course-lib {name}\b", section, re.M), name


def test_cli_info_reports_device_and_corpus(splits):
    out = subprocess.run(
        [sys.executable, "-m", "course_lib", "info"], capture_output=True, text=True, check=True
    ).stdout
    assert re.search(r"device\s+(cpu|cuda|mps)", out)
    assert "train 4,380,798 chars, val 469,510 chars, finetune 206,890 chars" in out


def test_cli_prepare_with_a_bad_tarball_exits_1_with_the_reason(tmp_path):
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
    assert proc.returncode == 1  # a clear error: the message, no traceback
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


def test_cli_tokenizer_errors_exit_1_with_the_reason(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    proc = _cli("tokenizer", "train", "--text", str(empty), "--vocab-size", "300", "--out", "x")
    assert proc.returncode == 1 and "is empty (or only whitespace)" in proc.stderr
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Fair is foul, caf\xe9".encode("latin-1"))
    proc = _cli("tokenizer", "train", "--text", str(latin1), "--vocab-size", "300", "--out", "x")
    assert proc.returncode == 1 and "byte 0xe9 at byte offset 17). Convert it" in proc.stderr
    proc = _cli("tokenizer", "decode", "5000")
    assert (
        proc.returncode == 1 and "token id 5000 is not in the vocabulary (size 2048)" in proc.stderr
    )


def test_cli_exit_status_says_what_kind_of_failure(tmp_path):
    """1 for a clear error, printed without a traceback; 2 for bad usage, from argparse or
    from options that do not go together."""
    proc = _cli("tokenizer", "train", "--text", str(tmp_path / "nope.txt"), "--vocab-size",
                "300", "--out", str(tmp_path / "tok.json"))  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("course-lib tokenizer: error: ") and "nope.txt" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _cli("tokenizer", "train", "--text", "x.txt")  # --vocab-size and --out missing
    assert proc.returncode == 2 and "the following arguments are required" in proc.stderr
    proc = _cli("train", "--depth", "2")  # sizes a run to your text: without --text, bad usage
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr == (
        "course-lib train: error: --depth and --passes size a run to your text: give --text too\n"
    )


@pytest.mark.parametrize("unexpected", [RuntimeError("boom"), KeyError("boom"),
                                        ValueError("boom, from outside the course")])  # fmt: skip
def test_cli_lets_an_unexpected_exception_show_its_traceback(monkeypatch, capsys, unexpected):
    """A bug is not a clear error: main does not catch it, so Python prints its traceback."""
    from course_lib.cli import corpus

    def info(args):
        raise unexpected

    monkeypatch.setattr(corpus, "cmd_info", info)
    with pytest.raises(type(unexpected), match="boom"):
        cli.main(["info"])
    assert "error" not in capsys.readouterr().err


def test_cli_an_unexpected_exception_exits_1_with_its_traceback(tmp_path):
    script = (
        "import sys\n"
        "from course_lib import cli\n"
        "from course_lib.cli import corpus\n"
        "def info(args):\n"
        "    raise KeyError('boom')\n"
        "corpus.cmd_info = info\n"
        "sys.exit(cli.main(['info']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "KeyError: 'boom'" in proc.stderr


def test_training_options_are_spelled_as_the_config_fields_in_every_command():
    """train, finetune and compress take --max-steps, --lr, --batch-size, --seed, --device from
    TrainConfig's fields (help texts included); compress's older --steps still works."""
    parser = cli.build_parser()
    options = ["--max-steps", "7", "--lr", "0.01", "--batch-size", "4", "--seed", "3"]
    for command in ("train", "finetune", "compress --int8"):
        args = parser.parse_args([*command.split(), *options, "--device", "cpu"])
        assert (args.max_steps, args.lr, args.batch_size, args.seed, args.device) == (
            7,
            0.01,
            4,
            3,
            "cpu",
        ), command
    assert parser.parse_args(["compress", "--distill", "n_layer=1", "--steps", "5"]).max_steps == 5
    assert parser.parse_args(["compress", "--int8"]).max_steps == 600
    assert parser.parse_args(["finetune"]).max_steps == 300
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {
        name: {a.dest: a.help for a in p._actions} for name, p in sub.choices.items()
        if name in ("train", "finetune", "compress")
    }  # fmt: skip
    assert helps["finetune"]["max_steps"] == "optimizer steps (default: 300)"
    assert helps["compress"]["batch_size"].startswith(helps["train"]["batch_size"][:-1])
