"""Reference computations the tests compare the library against."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from index.collection import Collection, default_dir


def naive_recall(images, texts, owner, ks):
    """The definition, literally: rank everything by (score desc, dataset order), look at top k."""

    def top(query, candidates, k):
        scored = [(-float(np.dot(query, c)), i) for i, c in enumerate(candidates)]
        return [i for _, i in sorted(scored)[:k]]

    t2i, i2t = {}, {}
    for k in ks:
        t2i[k] = sum(owner[t] in top(texts[t], images, k) for t in range(len(texts))) / len(texts)
        hits = 0
        for i in range(len(images)):
            found = top(images[i], texts, k)
            hits += any(owner[t] == i for t in found)
        i2t[k] = hits / len(images)
    return t2i, i2t


def stored_vectors(root: Path) -> dict[str, np.ndarray]:
    """Every searchable image's embedding by path, from the raw embedding file and the catalog."""
    directory = default_dir(root)
    with Collection.open(directory, readonly=True) as collection:
        dim, dtype = collection.manifest.dim, collection.manifest.embedding_dtype
        items = [i for i in collection.catalog.items() if i.status == "ok"]
        path = collection.store.path  # embeddings.bin, or the generation compaction wrote
    raw = np.fromfile(path, dtype=dtype).reshape(-1, dim).astype(np.float32)
    raw /= np.linalg.norm(raw, axis=1, keepdims=True)
    return {i.path: raw[i.row] for i in items}


def brute_force(root: Path, query: np.ndarray, allowed: set[str] | None = None):
    """Scores of every stored image (or of the allowed paths) for a query vector."""
    scores = {path: float(vector @ query) for path, vector in stored_vectors(root).items()}
    if allowed is not None:
        scores = {p: s for p, s in scores.items() if p in allowed}
    return scores
