"""FAISS indexes keyed by catalog ids, searched with per-call parameters."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import ann
from ._faiss import faiss
from .atomic import write_with_atomic
from .errors import CorruptCollection


def search(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    allowed_ids: np.ndarray | None = None,
    params: dict[str, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The k best (scores, ids) for each query: float32 (q, k) and int64 (q, k).

    allowed_ids restricts the search to those ids, and params sets the search depth
    ({"nprobe": 16}); both are passed for this call only. Missing results have id -1.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = max(1, min(k, max(index.ntotal, 1)))
    selector = None
    if allowed_ids is not None:
        selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed_ids, dtype=np.int64))
    search_params = ann.search_parameters(index, params, selector)
    if search_params is None:
        return index.search(queries, k)
    return index.search(queries, k, params=search_params)


def index_ids(index: faiss.Index) -> np.ndarray:
    """The ids an IDMap2 index holds: int64 (ntotal,)."""
    return faiss.vector_to_array(index.id_map).astype(np.int64, copy=False)


def save(index: faiss.Index, path: Path) -> None:
    write_with_atomic(path, lambda tmp: faiss.write_index(index, tmp))


def load(path: Path) -> faiss.Index:
    try:
        return faiss.read_index(str(path))
    except RuntimeError as e:
        raise CorruptCollection(f"{path} is not a readable FAISS index ({e})") from e
