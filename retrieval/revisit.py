"""Which catalogued files an index run must read again, beyond new and modified ones: items
whose embeddings were found damaged, and files skipped as unreadable whose permissions or
content changed without a new mtime (`chmod`, a rewrite that kept the time)."""

from __future__ import annotations

import os
from pathlib import Path

from index.catalog import STATUS_ERROR, STATUS_STALE, Catalog, Item

from .scan import FileInfo


def must_read(catalog: Catalog, root: Path, item: Item | None, file: FileInfo) -> bool:
    """Whether the file found by a scan must be read and, if it decodes, encoded."""
    if item is None or item.size != file.size or item.mtime_ns != file.mtime_ns:
        return True
    if item.status == STATUS_STALE:
        return True
    if item.status == STATUS_ERROR:
        return catalog.error_stat(item.path) != change_stat(root, item.path)
    return False


def change_stat(root: Path, path: str) -> tuple[int | None, int | None]:
    """(ctime_ns, mode) of a file: what changes when its permissions or inode data change,
    even where its mtime does not. (None, None) when it cannot be stat'ed."""
    try:
        info = os.stat(root / path)
    except OSError:
        return None, None
    return info.st_ctime_ns, info.st_mode
