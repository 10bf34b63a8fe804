"""Approximate indexes: the choice, the tuning, and a collection that follows its changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from index import ann, vector_index
from index.collection import Collection
from index.errors import CollectionError
from index.manifest import ModelIdentity

DIM = 16


def clustered(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, DIM))
    x = centres[rng.integers(0, 40, n)] + 0.5 * rng.normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_force(vectors: np.ndarray, ids: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    scores = vectors @ query
    return [int(ids[i]) for i in np.argsort(-scores, kind="stable")[:k]]


def make_collection(
    tmp_path: Path, n: int, seed: int = 0
) -> tuple[Collection, dict[int, np.ndarray]]:
    """A collection of n stored vectors, written through the catalog as the indexer does."""
    collection = Collection.create(tmp_path / "c", root=tmp_path, model=ModelIdentity("m"),
                                   dim=DIM, embedding_dtype="float32")  # fmt: skip
    collection.lock()
    return collection, add(collection, clustered(n, seed), prefix=f"s{seed}")


def add(collection: Collection, vectors: np.ndarray, prefix: str) -> dict[int, np.ndarray]:
    catalog = collection.catalog
    with catalog.transaction():
        first = catalog.reserve_rows(len(vectors))
        collection.store.write(first, vectors)
        ids = [
            catalog.put_ok(f"{prefix}/{i}.jpg", 1, 1, f"{prefix}-{i}", 1, 1, first + i)
            for i in range(len(vectors))
        ]
    return dict(zip(ids, vectors, strict=True))


def stored(collection: Collection) -> tuple[np.ndarray, np.ndarray]:
    ids, vectors, _ = collection.vectors()
    return ids, vectors


def test_the_choice_follows_size_and_memory():
    assert ann.choose_factory(10_000, 512).factory == "Flat"
    assert ann.choose_factory(ann.EXACT_LIMIT + 1, 512).factory.endswith(",Flat")
    assert ann.choose_factory(1_000_000, 512).factory == "IVF4096,Flat"
    plan = ann.choose_factory(10_000_000, 512, memory_budget=2 * 2**30)
    assert plan.factory.startswith("OPQ64,IVF") and plan.factory.endswith("PQ64np")
    # m-byte codes plus an 8-byte id per vector, and the coarse centroids, within the budget.
    assert ann.choose_factory(10_000_000, 512, memory_budget=800 * 2**20).factory.endswith("PQ64np")
    # 48 bytes would fit 600 MiB, but 512 dimensions do not split into 48 sub-vectors.
    assert ann.choose_factory(10_000_000, 512, memory_budget=600 * 2**20).factory.endswith("PQ32np")
    assert ann.choose_factory(10_000_000, 512, memory_budget=400 * 2**20).factory.endswith("PQ16np")
    with pytest.raises(ValueError, match="do not fit"):
        ann.choose_factory(10_000_000, 512, memory_budget=2**20)
    lists = [ann.ivf_lists(n) for n in (10, 10_000, 1_000_000, 10**12)]
    assert lists == [16, 512, 4096, 65536]
    assert all(v & (v - 1) == 0 for v in lists)


def test_tuning_picks_the_smallest_depth_that_reaches_the_target():
    vectors = clustered(6000)
    ids = np.arange(6000, dtype=np.int64) * 7 + 3
    index = ann.build("IVF64,Flat", vectors, ids, dim=DIM)
    tuning = ann.tune(index, vectors, ids, target_recall=0.9, queries=200)
    assert tuning.parameter == "nprobe"

    rows = np.random.default_rng(0).choice(6000, size=200, replace=False)

    def recall_at(nprobe: int) -> float:
        return measured_recall(index, vectors, ids, rows, nprobe)

    assert recall_at(tuning.value) == pytest.approx(tuning.recall, abs=1e-9)
    assert tuning.recall >= 0.9
    if tuning.value > 1:
        assert recall_at(tuning.value // 2) < 0.9


def test_a_reindexed_collection_searches_like_brute_force_within_its_recall(tmp_path):
    collection, _ = make_collection(tmp_path, 3000)
    tuning = collection.reindex("IVF32,Flat", target_recall=0.95)
    assert collection.manifest.search_params == {"nprobe": tuning.value}
    ids, vectors = stored(collection)
    noise = np.random.default_rng(9).normal(scale=0.05, size=(50, DIM))
    queries = vectors[::60] + noise  # near the data, as real queries are
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    _, found = collection.search(queries, 10)
    recall = np.mean([
        len(set(found[q].tolist()) & set(brute_force(vectors, ids, queries[q], 10))) / 10
        for q in range(len(queries))
    ])  # fmt: skip
    assert recall >= 0.9
    collection.close()


def test_an_ivf_index_follows_additions_and_deletions_in_place(tmp_path):
    collection, first = make_collection(tmp_path, 2000)
    collection.reindex("IVF16,Flat")
    index = vector_index.load(collection.dir / "index.faiss")
    centroids = ann._ivf(index).quantizer.reconstruct_n(0, 16)

    added = add(collection, clustered(300, seed=5), prefix="later")
    removed = list(first)[:100]
    with collection.catalog.transaction():
        collection.catalog.delete(removed)
    collection.sync_index()

    index = vector_index.load(collection.dir / "index.faiss")
    ids, _ = stored(collection)
    assert sorted(vector_index.index_ids(index).tolist()) == sorted(ids.tolist())
    assert set(added) <= set(ids.tolist()) and not set(removed) & set(ids.tolist())
    assert np.array_equal(ann._ivf(index).quantizer.reconstruct_n(0, 16), centroids)
    assert collection.manifest.factory == "IVF16,Flat"
    collection.close()


def test_an_index_that_cannot_remove_is_rebuilt(tmp_path):
    collection, first = make_collection(tmp_path, 500)
    collection.reindex("HNSW16")
    assert collection.manifest.index_updates == "rebuilt"
    gone = next(iter(first))
    with collection.catalog.transaction():
        collection.catalog.delete([gone])
    collection.sync_index()
    index = vector_index.load(collection.dir / "index.faiss")
    assert gone not in set(vector_index.index_ids(index).tolist()) and index.ntotal == 499
    collection.close()


def test_a_narrow_filter_on_an_ivf_index_still_finds_the_k_best_allowed(tmp_path):
    collection, vectors_by_id = make_collection(tmp_path, 3000)
    collection.reindex("IVF64,Flat", target_recall=0.5)
    allowed = np.array(sorted(vectors_by_id)[::97], dtype=np.int64)  # 31 scattered items
    query = clustered(1, seed=4)[0]
    _, found = collection.search(query[None], 5, allowed_ids=allowed)
    subset = np.stack([vectors_by_id[i] for i in allowed.tolist()])
    assert found[0].tolist() == brute_force(subset, allowed, query, 5)
    collection.close()


def test_the_automatic_choice_moves_on_as_the_collection_grows(tmp_path, monkeypatch):
    monkeypatch.setattr(ann, "EXACT_LIMIT", 1000)
    collection, _ = make_collection(tmp_path, 800)
    collection.sync_index()
    assert collection.manifest.factory == "Flat"
    add(collection, clustered(1200, seed=3), prefix="more")
    collection.sync_index()
    assert collection.manifest.factory == f"IVF{ann.ivf_lists(2000)},Flat"
    assert collection.manifest.tuning["recall"] >= 0.95
    collection.close()


def test_a_bad_factory_is_refused_and_the_index_kept(tmp_path):
    collection, _ = make_collection(tmp_path, 100)
    collection.reindex("Flat")
    before = (collection.dir / "index.faiss").read_bytes()
    with pytest.raises(CollectionError, match="cannot parse"):
        collection.reindex("Bogus,Thing")
    with pytest.raises(CollectionError, match="at least 4,096 vectors"):
        collection.reindex("IVF4096,Flat")
    assert (collection.dir / "index.faiss").read_bytes() == before
    collection.close()
    reopened = Collection.open(tmp_path / "c", readonly=True)
    assert reopened.manifest.factory == "Flat"
    reopened.close()


def measured_recall(index, vectors, ids, rows, nprobe: int) -> float:
    """Recall@10 against brute force, the query itself left out, computed here query by query."""
    params = ann.search_parameters(index, {"nprobe": nprobe}, None)
    total = 0.0
    for row in rows:
        truth = [i for i in brute_force(vectors, ids, vectors[row], 11) if i != ids[row]][:10]
        _, found = index.search(vectors[row][None], 11, params=params)
        got = [int(i) for i in found[0] if i != ids[row] and i >= 0][:10]
        total += len(set(got) & set(truth)) / 10
    return total / len(rows)


def test_an_unreachable_target_settles_where_recall_stops_growing():
    vectors = clustered(4000, seed=2)
    ids = np.arange(4000, dtype=np.int64)
    index = ann.build("IVF32,PQ2", vectors, ids, dim=DIM)  # 2-byte codes: far from 0.999
    tuning = ann.tune(index, vectors, ids, target_recall=0.999, queries=200)
    rows = np.random.default_rng(0).choice(4000, size=200, replace=False)
    best = measured_recall(index, vectors, ids, rows, 32)  # every list probed
    assert tuning.recall < 0.999 and tuning.value < 32
    assert measured_recall(index, vectors, ids, rows, tuning.value) >= best - 0.01
