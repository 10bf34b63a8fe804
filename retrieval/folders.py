"""A folder a user names, as the path prefix relative to the collection's root that the catalog
filters by: from the command line (`--under`, which may exist on disk) or from a web request
(never looked up on disk)."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from .errors import QueryError


def under_prefix(root: Path, under: str | Path) -> str:
    """A --under folder (absolute, or relative to the current folder or the root) as a path
    relative to the root ('' for all of it)."""
    candidate = Path(under).expanduser()
    absolute = candidate if candidate.is_absolute() else Path.cwd() / candidate
    if not candidate.is_absolute() and not absolute.exists():
        absolute = root / candidate
    for form in (Path(os.path.normpath(absolute)), absolute.resolve()):
        if form.is_relative_to(root):
            relative = form.relative_to(root).as_posix()
            return "" if relative == "." else relative
    raise QueryError(f"--under {under}: not inside the indexed folder {root}")


def folder_prefix(folder: str) -> str | None:
    """A folder named in a web request, as a path relative to the root; never looked up on
    disk, and refused when it would leave the root."""
    folder = folder.strip()
    if not folder.strip("/"):
        return None
    normal = posixpath.normpath(folder.rstrip("/"))
    if folder.startswith("/") or normal == ".." or normal.startswith("../") or "\\" in folder:
        raise QueryError(f"folder {folder!r} must be a folder inside the collection, like 'trips'")
    return None if normal == "." else normal
