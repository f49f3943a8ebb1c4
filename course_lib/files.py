"""Writing files so that a crash never leaves half of one. Lesson 05 (checkpoints) uses this.

Readers see the old version or the new one, never a mix: a file is written under a temporary
name beside its target, flushed to the disk, then renamed over it (a rename is all or nothing);
a folder is built under a temporary name and swapped in the same way. The corpus (``data``), the
metrics log (``train``) and checkpoints (``checkpoint``) are all written through these.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fresh_folder(out: Path) -> Path:
    """An empty folder beside ``out`` to build its new contents in, before ``swap_in``."""
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def swap_in(tmp: Path, out: Path) -> None:
    """Replace the folder ``out`` by the finished folder ``tmp`` (a rename: all or nothing).

    In between, ``out`` is missing for a moment while ``<out>.old-<pid>`` is deleted;
    ``checkpoint`` knows how to finish a swap that a crash cut there.
    """
    if out.exists():  # an incomplete, damaged or outdated earlier version
        trash = out.with_name(out.name + f".old-{os.getpid()}")
        os.replace(out, trash)
        shutil.rmtree(trash)
    os.replace(tmp, out)


def fsync(path: Path) -> None:
    """Flush a file, or a folder's list of entries, to the disk (POSIX; elsewhere a no-op)."""
    if os.name != "posix":  # Windows cannot open a folder, nor fsync a read-only handle
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover(path: Path, marker: str) -> None:
    """Finish a swap that a crash cut short.

    ``swap_in`` renames the old folder to ``<name>.old-<pid>``, deletes it, then renames the
    new one from ``<name>.tmp-<pid>`` to ``<name>``. Killed in between, ``<name>`` is missing
    and the new folder is complete (it has ``marker``, the file written last), so it takes its
    place.
    """
    siblings = [*path.parent.glob(f"{path.name}.tmp-*"), *path.parent.glob(f"{path.name}.old-*")]
    if path.exists() or not siblings:
        return
    # A save running right now is between its renames for a moment: let it finish first,
    # rather than race it (it would then find its folder gone and fail).
    deadline = time.monotonic() + 1.0
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    complete = [d for d in path.parent.glob(f"{path.name}.tmp-*") if (d / marker).is_file()]
    if path.exists() or not complete:
        return
    newest = max(complete, key=lambda d: (d / marker).stat().st_mtime_ns)
    with contextlib.suppress(OSError):  # another reader may be recovering it too
        os.replace(newest, path)
    for old in path.parent.glob(f"{path.name}.old-*"):
        shutil.rmtree(old, ignore_errors=True)


def retry_if_swapped(
    load: Callable[..., T], errors: tuple[type[Exception], ...]
) -> Callable[..., T]:
    """``load(path, ...)``, read again when a writer swapped the folder in while it read (a
    notebook loads the latest checkpoint while training saves the next): files vanish under
    the reader for a moment. One of ``errors`` while nothing changed is a real error."""

    @functools.wraps(load)
    def wrapper(path: str | Path, *args: Any, **kwargs: Any) -> T:
        for attempt in range(3):
            before = _identity(Path(path))
            try:
                result = load(path, *args, **kwargs)
            except errors:
                if attempt == 2 or _identity(Path(path)) == before:
                    raise  # nothing changed under us: the error is real
                continue
            if attempt == 2 or _identity(Path(path)) == before:
                return result  # read from one folder, start to end
        raise AssertionError("unreachable")

    return wrapper


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns
