"""Atomic file writes: write a temporary file beside the target, fsync it, then os.replace."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path in target's directory; on success it replaces target atomically.

    On any exception the temporary file is removed and target is left untouched.
    """
    target = Path(target)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        # mkstemp makes the file 0600; the target gets the mode any new file would (0644 mostly).
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_with_atomic(target: Path, writer: Callable[[str], None]) -> None:
    """Call writer(temporary_path) and move its output onto target atomically."""
    with atomic_path(target) as tmp:
        writer(str(tmp))


def _umask() -> int:
    """The process's umask, from /proc where there is one: os.umask reads it only by setting
    it, which for a moment changes it for every thread."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            masks = [int(line.split()[1], 8) for line in status if line.startswith("Umask:")]
    except OSError:
        masks = []
    if masks:
        return masks[0]
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
