"""A collection to damage, and what an undamaged one holds, for the integrity and compaction
tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from conftest import write_photos

from index.collection import Collection, default_dir
from retrieval.search import Searcher

NAMES = [f"d{i % 2}/p{i:02d}.png" for i in range(12)]


def make_pristine(folder: Path, encoder) -> Path:
    from retrieval.indexer import index_folder

    root = folder / "photos"
    write_photos(root, NAMES)
    (root / "bad.jpg").write_text("not an image")
    index_folder(root, model=encoder.identity, encoder=encoder, batch_size=4)
    return root


def copy_of(pristine: Path, folder: Path) -> Path:
    root = folder / "photos"
    shutil.copytree(pristine, root)
    return root


def state(root: Path) -> dict[str, tuple]:
    """Per path: status, hash, error and embedding (None without one)."""
    with Collection.open(default_dir(root), readonly=True) as collection:
        items = collection.catalog.items()
        store = collection.store
        return {
            i.path: (i.status, i.hash, i.error, None if i.row is None else store.read([i.row])[0])
            for i in items
        }


def assert_same_state(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for path, (status, digest, error, vector) in expected.items():
        assert got[path][:3] == (status, digest, error), path
        if vector is None:
            assert got[path][3] is None, path
        else:
            np.testing.assert_allclose(got[path][3], vector, atol=2e-3)


def assert_search_is_brute_force(root: Path, expected: dict, seed: int = 0) -> None:
    """Search with random queries equals ranking the expected embeddings by hand."""
    paths = [p for p, v in expected.items() if v[3] is not None]
    vectors = np.stack([expected[p][3] for p in paths])
    rng = np.random.default_rng(seed)
    with Searcher.open(default_dir(root)) as searcher:
        for _ in range(3):
            query = rng.normal(size=vectors.shape[1]).astype(np.float32)
            query /= np.linalg.norm(query)
            hits = searcher.search_vector(query, k=len(paths))
            scores = vectors @ query
            assert len(hits) == len(paths)
            got = np.array([h.score for h in hits])
            np.testing.assert_allclose(got, np.sort(scores)[::-1], atol=3e-3)
            for hit in hits:
                rel = hit.path.relative_to(searcher.collection.root).as_posix()
                assert abs(scores[paths.index(rel)] - hit.score) < 3e-3
