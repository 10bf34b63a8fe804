"""Filling one trained IVF index in parts: each part is a copy of the trained, empty index that
holds one range of a collection's stored vectors; merged in range order, the parts hold what
adding every range to one index, in order, would have (`ann.merge_lists`).

Indexes cross process boundaries here as bytes (faiss's own serialisation), so a caller that
ships them to other processes never handles a FAISS object.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from . import ann, inspect
from ._faiss import faiss
from .vectors import EmbeddingStore


def to_bytes(index: faiss.Index) -> bytes:
    """The index as faiss writes it to a file."""
    return faiss.serialize_index(index).tobytes()


def from_bytes(data: bytes) -> faiss.Index:
    """An index from to_bytes; ValueError if the bytes are not one."""
    try:
        return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"not a readable FAISS index ({reason})") from e


def splits_by_lists(index: faiss.Index) -> bool:
    """Whether parts of the index can be filled apart and merged: IVF indexes (bare or behind
    OPQ), whose inverted lists are appended one to another. Flat and HNSW indexes cannot."""
    return inspect.holds_ids(index)


def fill(
    trained: bytes,
    store: EmbeddingStore,
    rows: np.ndarray,
    ids: np.ndarray,
    *,
    threads: int | None = None,
) -> bytes:
    """A copy of the trained index (to_bytes) holding the stored vectors at rows (m,), keyed by
    ids (m,) int64, added in that order; as bytes. threads: OpenMP threads for FAISS while
    adding (None: as they are), so that parts filled side by side share the cores."""
    index = from_bytes(trained)
    before = faiss.omp_get_max_threads()
    if threads is not None:
        faiss.omp_set_num_threads(threads)
    try:
        ann.add_rows(index, store.view(rows), ids, 0, len(ids))
    finally:
        faiss.omp_set_num_threads(before)
    return to_bytes(index)


def merged(trained: bytes, parts: Iterable[bytes]) -> faiss.Index:
    """The trained index with each part's lists appended, in the order given."""
    index = from_bytes(trained)
    for data in parts:
        ann.merge_lists(index, from_bytes(data))
    return index
