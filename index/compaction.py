"""Reclaiming the embedding rows that no item uses any more (deleted, changed or damaged files).

The scheme: the catalog's meta table names the embeddings file in use (`embeddings_file`).
Compaction, under the write lock,

1. copies the live rows, in row order, into a NEW file (`embeddings.N.bin`, N one more than the
   current generation), written under a temporary name, fsynced, renamed, the folder fsynced;
2. in ONE SQLite transaction points every item at its row in the new file, sets `next_row` to
   the number of live rows and names the new file as the one in use;
3. removes the old file.

A kill before step 2 commits leaves the old file in use and an unused new one, which the next
compaction (or `retrieval check --repair`) removes; a kill after it leaves an unused old file,
removed the same way. Readers never see a mix: they take the rows and the file's name in one
catalog snapshot, and a reader that mapped the old file keeps its inode alive (POSIX) until it
is done. Item ids do not change, nor do their vectors, so the FAISS indexes (keyed by ids) stay
valid as they are; the catalog's version is left alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .atomic import atomic_path
from .catalog import IMAGE, Catalog
from .errors import StorageError
from .layout import SPACES
from .vectors import EmbeddingStore


class Collection(Protocol):
    """What compaction needs of an open collection (its writer holding the lock)."""

    dir: Path
    catalog: Catalog

    def store_for(self, kind: str = IMAGE) -> EmbeddingStore: ...


DEAD_SHARE = 0.3
"""An index run compacts when at least this share of the embeddings file is dead rows ..."""
MIN_DEAD_ROWS = 1024
"""... and they are at least this many (below that the space is not worth a rewrite)."""
CHUNK = 65_536


@dataclass(frozen=True)
class Compaction:
    """What a compaction reclaimed: rows dropped and bytes freed, of images and texts."""

    rows: int = 0
    bytes: int = 0


def live_rows(collection: Collection, kind: str = IMAGE) -> np.ndarray:
    """The distinct rows (int64, increasing) that items of this kind use."""
    _, rows = collection.catalog.vector_rows(kind)
    return np.unique(np.asarray(rows, dtype=np.int64))


def dead_rows(collection: Collection, kind: str = IMAGE) -> int:
    """Rows of the embeddings file that no item uses."""
    return max(0, collection.catalog.next_row(kind) - len(live_rows(collection, kind)))


def due(collection: Collection) -> bool:
    """Whether the images' dead rows pass both DEAD_SHARE of the file and MIN_DEAD_ROWS."""
    total = collection.catalog.next_row(IMAGE)
    dead = dead_rows(collection, IMAGE)
    return dead >= MIN_DEAD_ROWS and dead >= DEAD_SHARE * total


def compact_if_due(collection: Collection) -> int:
    """Compact when due(); returns the rows dropped (0 when it was not due)."""
    return compact(collection).rows if due(collection) else 0


def compact(collection: Collection) -> Compaction:
    """Rewrite the embeddings of images and texts without their dead rows (the lock held)."""
    rows = freed = 0
    for kind in SPACES:
        dropped, size = _compact_kind(collection, kind)
        rows, freed = rows + dropped, freed + size
    remove_leftovers(collection)
    return Compaction(rows, freed)


def _compact_kind(collection: Collection, kind: str) -> tuple[int, int]:
    """(rows dropped, bytes freed) compacting the embeddings of one kind of item."""
    catalog = collection.catalog
    old = collection.store_for(kind)
    live = live_rows(collection, kind)
    held = old.rows()
    if len(live) == catalog.next_row(kind) == held:
        return 0, 0
    new_path = collection.dir / next_name(SPACES[kind].embeddings, old.path.name)
    write_rows(old, live, new_path)
    moves = dict(zip(live.tolist(), range(len(live)), strict=True))
    with catalog.transaction():  # the switch: rows and the file in use change together
        catalog.move_rows(kind, moves, len(live))
        catalog.set_meta(SPACES[kind].file_key, new_path.name)
    size = old.path.stat().st_size if old.path.exists() else 0
    old.path.unlink(missing_ok=True)
    return held - len(live), size - len(live) * old.row_bytes


def write_rows(old: EmbeddingStore, live: np.ndarray, target: Path) -> None:
    """Copy rows `live` of store `old`, in order, into a new file at target, durably."""
    available = old.rows()
    if len(live) and live.max() >= available:
        raise StorageError(
            f"{old.path} holds {available} rows but row {int(live.max())} is in use; "
            "run `retrieval check --repair` first"
        )
    try:
        with atomic_path(target) as tmp, open(tmp, "wb") as out:
            if available:
                mapped = np.memmap(old.path, dtype=old.dtype, mode="r", shape=(available, old.dim))
                for start in range(0, len(live), CHUNK):
                    out.write(np.ascontiguousarray(mapped[live[start : start + CHUNK]]).tobytes())
    except OSError as e:
        raise StorageError(
            f"cannot write {target} ({e.strerror or e}); free some space and run the command "
            "again (the collection is unchanged)"
        ) from e


_GENERATION = re.compile(r"^(?P<stem>.+?)(?:\.(?P<n>\d+))?\.bin$")


def next_name(base: str, current: str) -> str:
    """The name of the next generation of embeddings file `base` after `current`:
    embeddings.bin -> embeddings.1.bin -> embeddings.2.bin ..."""
    match = _GENERATION.match(current)
    generation = int(match.group("n")) if match and match.group("n") else 0
    return f"{base[: -len('.bin')]}.{generation + 1}.bin"


def leftovers(collection: Collection) -> list[Path]:
    """Embeddings files of another generation than the one in use: left by an interrupted
    compaction, never read."""
    found = []
    for kind, space in SPACES.items():
        current = collection.store_for(kind).path.name
        stem = space.embeddings[: -len(".bin")]
        for path in collection.dir.glob(f"{stem}*.bin"):
            match = _GENERATION.match(path.name)
            if path.name != current and match and match.group("stem") == stem:
                found.append(path)
    return sorted(found)


def remove_leftovers(collection: Collection) -> None:
    for path in leftovers(collection):
        path.unlink(missing_ok=True)
