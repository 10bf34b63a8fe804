"""The stored embeddings: one flat binary file of rows, memory-mapped for reading.

A row is written (and fsynced) before the catalog commits the item that points at it, so a
crash leaves at most unreferenced rows past the catalog's `next_row`, which later writes reuse.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CorruptCollection, StorageError

DTYPES = {"float16": np.float16, "float32": np.float32}


def as_float32(vectors: Any, dim: int) -> np.ndarray:
    """Vectors (an array, or rows read from a StoredVectors view) as contiguous float32 (n, dim)."""
    return np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, dim)


class EmbeddingStore:
    """Rows of `dim` values of `dtype` ('float16' or 'float32') in one file."""

    def __init__(self, path: Path, dim: int, dtype: str = "float16") -> None:
        if dtype not in DTYPES:
            raise ValueError(f"embedding dtype must be one of {sorted(DTYPES)}, not {dtype!r}")
        self.path = Path(path)
        self.dim = dim
        self.dtype = np.dtype(DTYPES[dtype])
        self.row_bytes = dim * self.dtype.itemsize

    def write(self, first_row: int, vectors: np.ndarray) -> None:
        """Store vectors (n, dim) at rows first_row .. first_row + n - 1, durably."""
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected (n, {self.dim}) vectors, got {vectors.shape}")
        data = np.ascontiguousarray(vectors, dtype=self.dtype).tobytes()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                os.pwrite(fd, data, first_row * self.row_bytes)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise StorageError(
                f"cannot write {self.path} ({e.strerror or e}); free some space (or make it "
                "writable) and run the command again (nothing committed was lost)"
            ) from e

    def rows(self) -> int:
        """How many whole rows the file holds (some may be unreferenced)."""
        try:
            return self.path.stat().st_size // self.row_bytes
        except FileNotFoundError:
            return 0

    def read(self, rows: np.ndarray | list[int]) -> np.ndarray:
        """Rows as float32 (n, dim), L2-normalised again after float16 rounding, in the order
        asked."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        available = self.rows()
        if rows.max() >= available or rows.min() < 0:
            raise CorruptCollection(
                f"{self.path} holds {available} embeddings but row {int(rows.max())} was asked "
                "for; run `retrieval check --repair`, then `retrieval index`"
            )
        mapped = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(available, self.dim))
        return normalised(mapped[rows])

    def view(self, rows: np.ndarray | list[int]) -> StoredVectors:
        """The vectors at these rows, read (and converted to float32) only when indexed."""
        return StoredVectors(self, np.asarray(rows, dtype=np.int64))


class StoredVectors:
    """A lazy (n, dim) float32 view of some rows of a store: `view[key]` reads rows[key] (a
    slice, an integer array or a boolean mask) from the memory map, L2-normalised."""

    def __init__(self, store: EmbeddingStore, rows: np.ndarray) -> None:
        self.store = store
        self.rows = rows
        self.shape = (len(rows), store.dim)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: slice | np.ndarray) -> np.ndarray:
        return self.store.read(np.atleast_1d(self.rows[key]))


def normalised(rows: Any) -> np.ndarray:
    """Rows scaled to unit L2 norm: float32 (n, d) from any (n, d) array; zero rows stay zero."""
    array = np.asarray(rows, dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore"):  # a damaged row reads as NaN, not a warning
        return array / np.maximum(np.linalg.norm(array, axis=1, keepdims=True), 1e-12)
