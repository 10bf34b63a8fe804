"""Finding image files under a root: recursive, hidden entries skipped, no symlink loops."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .images import IMAGE_EXTENSIONS


@dataclass(frozen=True)
class FileInfo:
    """A file found by a scan. path is relative to the root, with '/' separators."""

    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class ScanProblem:
    path: str
    error: str


def scan(
    root: Path,
    *,
    exclude: Sequence[str] = (),
    problems: list[ScanProblem] | None = None,
) -> Iterator[FileInfo]:
    """Yield every image file under root, in a stable (sorted) order.

    Hidden files and folders (a name starting with '.') are skipped, and so is anything whose
    relative path or name matches a glob in `exclude`. Symlinks are followed, but a folder is
    never entered twice, so a link loop ends. Unreadable folders are reported in `problems`.
    """
    root = Path(root).resolve()
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[Path, str]] = [(root, "")]
    while stack:
        folder, rel = stack.pop()
        try:
            info = folder.stat()
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            with os.scandir(folder) as entries:
                children = sorted(entries, key=lambda e: e.name)
        except OSError as e:
            if problems is not None:
                problems.append(ScanProblem(rel or ".", f"cannot read folder ({e.strerror})"))
            continue
        subfolders = []
        for entry in children:
            name = entry.name
            path = f"{rel}/{name}" if rel else name
            if name.startswith(".") or _excluded(path, name, exclude):
                continue
            try:
                if entry.is_dir():
                    subfolders.append((Path(entry.path), path))
                    continue
                if os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                    continue
                stat = entry.stat()
            except OSError as e:
                if problems is not None:
                    problems.append(ScanProblem(path, f"cannot stat ({e.strerror})"))
                continue
            yield FileInfo(path, stat.st_size, stat.st_mtime_ns)
        stack.extend(reversed(subfolders))


def stat_files(
    root: Path, paths: Iterable[str], problems: list[ScanProblem] | None = None
) -> Iterator[FileInfo]:
    """FileInfo for each of these paths (relative to root), in order; missing ones are problems."""
    for path in dict.fromkeys(paths):
        try:
            stat = (Path(root) / path).stat()
        except OSError as e:
            if problems is not None:
                problems.append(ScanProblem(path, f"cannot stat ({e.strerror})"))
            continue
        yield FileInfo(Path(path).as_posix(), stat.st_size, stat.st_mtime_ns)


def _excluded(path: str, name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(name, p) for p in patterns)
