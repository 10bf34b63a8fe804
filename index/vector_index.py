"""FAISS indexes keyed by catalog ids, searched with per-call parameters."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from .atomic import write_with_atomic
from .errors import CorruptCollection


def build(factory: str, vectors: np.ndarray, ids: np.ndarray, *, dim: int) -> faiss.Index:
    """An inner-product index over vectors (n, dim) float32, keyed by int64 ids (n,)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, dim)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    inner = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    index = faiss.IndexIDMap2(inner)
    if not inner.is_trained and len(vectors):
        index.train(vectors)
    if len(vectors):
        index.add_with_ids(vectors, ids)
    return index


def search(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    allowed_ids: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The k best (scores, ids) for each query: float32 (q, k) and int64 (q, k).

    allowed_ids restricts the search to those ids (an IDSelector passed for this call only).
    Missing results (fewer than k candidates) have id -1.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = max(1, min(k, max(index.ntotal, 1)))
    if allowed_ids is None:
        return index.search(queries, k)
    selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed_ids, dtype=np.int64))
    params = faiss.SearchParameters(sel=selector)
    return index.search(queries, k, params=params)


def save(index: faiss.Index, path: Path) -> None:
    write_with_atomic(path, lambda tmp: faiss.write_index(index, tmp))


def load(path: Path) -> faiss.Index:
    try:
        return faiss.read_index(str(path))
    except RuntimeError as e:
        raise CorruptCollection(f"{path} is not a readable FAISS index ({e})") from e
