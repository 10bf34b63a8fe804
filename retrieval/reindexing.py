"""Rebuilding a collection's image index from its stored embeddings."""

from __future__ import annotations

from pathlib import Path

from index.collection import Collection, resolve_dir
from index.tuning import Tuning

from .errors import RetrievalError


def reindex(
    collection_dir: Path | None = None,
    *,
    factory: str | None = None,
    memory_budget: int | None = None,
    target_recall: float | None = None,
) -> Tuning:
    """Rebuild a collection's image index from its stored embeddings; no image is encoded.

    factory: a FAISS factory string ("IVF1024,Flat", "HNSW32", ...), or None to choose one from
    the collection's size and memory_budget (bytes) and to keep choosing as it grows.
    """
    if target_recall is not None and not 0 < target_recall <= 1:
        raise RetrievalError(f"--target-recall must be in (0, 1], not {target_recall}")
    with Collection.open(resolve_dir(collection_dir)) as collection, collection.locked():
        return collection.reindex(factory, memory_budget=memory_budget, target_recall=target_recall)
