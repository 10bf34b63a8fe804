"""Finding image files under a root: recursive, hidden entries skipped, no symlink loops.

Names are kept as the file system gives them: a name that is not UTF-8 is a str holding
surrogate escapes (os.fsencode gives its bytes back). `names.printable` is the form to show.
"""

from __future__ import annotations

import errno
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
    """Something under the root that could not be looked at. folder: it is a folder, so what it
    holds is unknown (not gone)."""

    path: str
    error: str
    folder: bool = False


def scan(
    root: Path,
    *,
    exclude: Sequence[str] = (),
    problems: list[ScanProblem] | None = None,
) -> Iterator[FileInfo]:
    """Yield every image file under root, in a stable (sorted) order.

    Hidden files and folders (a name starting with '.') are skipped, and so is anything whose
    relative path or name matches a glob in `exclude`. Symlinks are followed, but a folder is
    never entered twice, so a link loop ends. Unreadable folders, dangling links and link
    loops are reported in `problems`. Files that are not regular files (a FIFO, a link to a
    device) are yielded too: the reader refuses them without opening them.
    """
    root = Path(root).resolve()
    seen: dict[tuple[int, int], str] = {}
    stack: list[tuple[Path, str]] = [(root, "")]
    report = problems.append if problems is not None else (lambda _problem: None)
    while stack:
        folder, rel = stack.pop()
        try:
            info = folder.stat()
            first = seen.setdefault((info.st_dev, info.st_ino), rel)
            if first != rel:
                if _inside(rel, first):
                    report(ScanProblem(rel, f"link loop: leads back to {first or '.'}"))
                continue
            with os.scandir(folder) as entries:
                children = sorted(entries, key=lambda e: e.name)
        except OSError as e:
            report(ScanProblem(rel or ".", f"cannot read folder ({e.strerror})", folder=True))
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
                report(ScanProblem(path, _stat_error(entry, e)))
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


def out_of_sight(path: str, problems: Sequence[ScanProblem]) -> bool:
    """Whether a problem hid this path from the scan: it is the problem's own path, or lies in
    a folder that could not be read (what it holds is unknown, not gone)."""
    return any(
        path == p.path or (p.folder and _inside(path, "" if p.path == "." else p.path))
        for p in problems
    )


def _excluded(path: str, name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(name, p) for p in patterns)


def _inside(path: str, folder: str) -> bool:
    return not folder or path.startswith(folder + "/")


def _stat_error(entry: os.DirEntry, error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return "link loop: a symbolic link that leads back to itself"
    if error.errno == errno.ENOENT and entry.is_symlink():
        return "dangling link: its target does not exist"
    return f"cannot stat ({error.strerror})"
