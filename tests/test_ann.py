"""Approximate indexes: the choice, the tuning, and a collection that follows its changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_cli import cli

from index import ann, exact, inspect, vector_index
from index import tuning as index_tuning
from index.collection import Collection, NewImage
from index.errors import CollectionError
from index.manifest import ModelIdentity
from index.tuning import exact_neighbours, tune

DIM = 16


def recall_against_brute_force(found, vectors, ids, queries, k: int = 10) -> float:
    """Mean recall@k of the found ids (q, k) against exact search in numpy."""
    return float(np.mean([
        len(set(found[q].tolist()) & set(brute_force(vectors, ids, queries[q], k))) / k
        for q in range(len(queries))
    ]))  # fmt: skip


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
    """A collection of n stored vectors, written as the indexer writes them."""
    collection = Collection.create(tmp_path / "c", root=tmp_path, model=ModelIdentity("m"),
                                   dim=DIM, embedding_dtype="float32")  # fmt: skip
    collection.lock()
    return collection, add(collection, clustered(n, seed), prefix=f"s{seed}")


def add(collection: Collection, vectors: np.ndarray, prefix: str) -> dict[int, np.ndarray]:
    files = [
        NewImage(f"{prefix}/{i}.jpg", 1, 1, f"{prefix}-{i}", 1, 1) for i in range(len(vectors))
    ]
    ids = [item.id for item in collection.append_images(vectors, files)]
    return dict(zip(ids, vectors, strict=True))


def stored(collection: Collection) -> tuple[np.ndarray, np.ndarray]:
    ids, vectors, _ = collection.vectors()
    return ids, vectors


def test_the_choice_follows_size_and_memory():
    assert ann.choose_factory(10_000, 512).factory == "Flat"
    assert ann.choose_factory(exact.EXACT_LIMIT + 1, 512).factory.endswith(",Flat")
    assert ann.choose_factory(1_000_000, 512).factory == "IVF4096,Flat"
    plan = ann.choose_factory(10_000_000, 512, memory_budget=2 * 2**30)
    assert plan.factory.startswith("OPQ64,IVF") and plan.factory.endswith("PQ64np")
    # m-byte codes plus an 8-byte id per vector, the coarse centroids and OPQ's rotation.
    assert ann.choose_factory(10_000_000, 512, memory_budget=800 * 2**20).factory.endswith("PQ64np")
    # 48 bytes would fit 600 MiB, but 512 dimensions do not split into 48 sub-vectors.
    assert ann.choose_factory(10_000_000, 512, memory_budget=600 * 2**20).factory.endswith("PQ32np")
    assert ann.choose_factory(10_000_000, 512, memory_budget=400 * 2**20).factory.endswith("PQ16np")
    with pytest.raises(ValueError, match="do not fit"):
        ann.choose_factory(10_000_000, 512, memory_budget=2**20)
    for budget in (2 * 2**30, 800 * 2**20, 600 * 2**20, 400 * 2**20):
        plan = ann.choose_factory(10_000_000, 512, memory_budget=budget)
        assert plan.bytes == ann.index_bytes(plan.factory, 10_000_000, 512) <= budget
    lists = [ann.ivf_lists(n) for n in (10, 10_000, 1_000_000, 10**12)]
    assert lists == [16, 512, 4096, 65536]
    assert all(v & (v - 1) == 0 for v in lists)


def test_tuning_picks_the_smallest_depth_that_reaches_the_target():
    vectors = clustered(6000)
    ids = np.arange(6000, dtype=np.int64) * 7 + 3
    index = ann.build("IVF64,Flat", vectors, ids, dim=DIM)
    tuning = tune(index, vectors, ids, target_recall=0.9, queries=200)
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
    assert recall_against_brute_force(found, vectors, ids, queries) >= 0.9
    collection.close()


def test_an_ivf_index_follows_additions_and_deletions_in_place(tmp_path):
    collection, first = make_collection(tmp_path, 2000)
    collection.reindex("IVF16,Flat")
    index = vector_index.load(collection.dir / "index.faiss")
    centroids = inspect.ivf(index).quantizer.reconstruct_n(0, 16)

    added = add(collection, clustered(300, seed=5), prefix="later")
    removed = list(first)[:100]
    with collection.catalog.transaction():
        collection.catalog.delete(removed)
    collection.sync_index()

    index = vector_index.load(collection.dir / "index.faiss")
    ids, _ = stored(collection)
    assert sorted(vector_index.index_ids(index).tolist()) == sorted(ids.tolist())
    assert set(added) <= set(ids.tolist()) and not set(removed) & set(ids.tolist())
    assert np.array_equal(inspect.ivf(index).quantizer.reconstruct_n(0, 16), centroids)
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
    monkeypatch.setattr(exact, "EXACT_LIMIT", 1000)
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
    tuning = tune(index, vectors, ids, target_recall=0.999, queries=200, refine=False)
    rows = np.random.default_rng(0).choice(4000, size=200, replace=False)
    best = measured_recall(index, vectors, ids, rows, 32)  # every list probed
    assert tuning.recall < 0.999 and tuning.value < 32 and tuning.refine == 0
    assert measured_recall(index, vectors, ids, rows, tuning.value) >= best - 0.01
    assert "below the 0.999 asked for" in tuning.warning


@pytest.mark.parametrize(
    ("factory", "n"),
    [("Flat", 2000), ("IVF16,Flat", 3000), ("IVF16,PQ4x4", 3000), ("OPQ4,IVF16,PQ4x4np", 3000),
     ("HNSW8", 2000)],
)  # fmt: skip
def test_the_memory_estimate_matches_the_index_as_written(factory, n):
    vectors = clustered(n)
    index = ann.build(factory, vectors, np.arange(n, dtype=np.int64) * 3, dim=DIM)
    written = len(ann.faiss.serialize_index(index))
    assert ann.index_bytes(factory, n, DIM) == pytest.approx(written, rel=0.1)


def test_ivf_indexes_keep_their_own_ids_and_old_id_maps_still_load():
    vectors = clustered(3000)
    ids = np.arange(3000, dtype=np.int64) * 7 + 1
    index = ann.build("OPQ4,IVF16,Flat", vectors, ids, dim=DIM)
    assert not isinstance(ann.faiss.downcast_index(index), ann.faiss.IndexIDMap)
    index.remove_ids(ids[:10])
    assert sorted(vector_index.index_ids(index).tolist()) == sorted(ids[10:].tolist())
    # An index saved by an earlier version: IVF inside an IndexIDMap2.
    old = ann.faiss.IndexIDMap2(
        ann.faiss.index_factory(DIM, "IVF16,Flat", ann.faiss.METRIC_INNER_PRODUCT)
    )
    old.train(vectors)
    old.add_with_ids(vectors, ids)
    assert inspect.depth_parameter(old) == "nprobe" and inspect.supports_removal(old)
    assert sorted(vector_index.index_ids(old).tolist()) == sorted(ids.tolist())
    _, found = vector_index.search(old, vectors[:1], 3, params={"nprobe": 16})
    assert found[0].tolist() == brute_force(vectors, ids, vectors[0], 3)


def test_exact_ground_truth_in_chunks_matches_brute_force(tmp_path, monkeypatch):
    monkeypatch.setattr(ann, "CHUNK", 700)
    collection = Collection.create(
        tmp_path / "c", root=tmp_path, model=ModelIdentity("m"), dim=DIM
    )  # fmt: skip  (float16, as collections store them)
    collection.lock()
    add(collection, clustered(2500), prefix="a")
    ids, view, _ = collection.stored()
    vectors = view[:]
    queries = clustered(20, seed=7)
    found = exact_neighbours(view, ids, queries, 10)
    for query, row in zip(queries, found, strict=True):
        truth = brute_force(vectors, ids, query, 10)
        scores = vectors @ query
        by_id = dict(zip(ids.tolist(), scores.tolist(), strict=True))
        # Equal as sets up to ties at the tenth place.
        assert set(row.tolist()) ^ set(truth) <= {
            i for i in set(row.tolist()) | set(truth) if abs(by_id[i] - by_id[truth[-1]]) < 1e-6
        }
    collection.close()


def test_a_compressed_index_is_reranked_from_the_stored_vectors_to_reach_the_target(tmp_path):
    collection, _ = make_collection(tmp_path, 3000)
    tuning = collection.reindex("IVF32,PQ4x4", target_recall=0.95)
    assert tuning.refine > 0 and tuning.recall >= 0.95 and tuning.warning is None
    assert collection.manifest.search_params == {"nprobe": tuning.value, "refine": tuning.refine}
    ids, vectors = stored(collection)
    noise = np.random.default_rng(9).normal(scale=0.05, size=(40, DIM))
    queries = vectors[::75] + noise  # near the data, as tuning's own held-out queries are
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    scores, found = collection.search(queries, 10)
    assert recall_against_brute_force(found, vectors, ids, queries) >= 0.9
    # Re-ranked scores are the exact inner products of the stored vectors, best first.
    by_id = dict(zip(ids.tolist(), vectors, strict=True))
    for q in range(len(queries)):
        exact = [float(by_id[i] @ queries[q]) for i in found[q].tolist()]
        assert np.allclose(scores[q], exact, atol=1e-5) and exact == sorted(exact, reverse=True)
    collection.close()


def test_an_unreachable_target_is_recorded_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(
        index_tuning, "REFINE_FACTORS", (1,)
    )  # re-rank no more than asked: codes alone
    collection, _ = make_collection(tmp_path, 3000)
    tuning = collection.reindex("IVF16,PQ2x4", target_recall=0.99)
    assert tuning.recall < 0.99 and "below the 0.99 asked for" in tuning.warning
    reopened = Collection.open(tmp_path / "c", readonly=True)
    assert reopened.manifest.tuning["recall"] == tuning.recall
    assert reopened.manifest.tuning["warning"] == tuning.warning
    reopened.close()
    collection.close()
    shown = cli("info", "--index", str(tmp_path / "c"))
    assert shown.returncode == 0 and f"warning: {tuning.warning}" in shown.stderr
    assert f"recall@10 {tuning.recall:.3f}" in shown.stdout


def test_the_search_device_follows_the_gpus_faiss_sees(monkeypatch):
    monkeypatch.setattr(vector_index, "gpu_count", lambda: 0)
    assert [vector_index.gpu_device(d) for d in ("auto", "cpu", "cuda", "cuda:1")] == [None] * 4
    monkeypatch.setattr(vector_index, "gpu_count", lambda: 2)
    assert [vector_index.gpu_device(d) for d in ("auto", "cpu", "cuda", "cuda:1", "cuda:2")] == [
        0, None, 0, 1, None,
    ]  # fmt: skip
    with pytest.raises(ValueError, match="device must be"):
        vector_index.gpu_device("tpu")


def test_a_gpu_copy_is_made_once_per_index_version_and_answers_like_the_cpu(tmp_path, monkeypatch):
    """The GPU branch, run on the CPU: a clone stands in for index_cpu_to_gpu."""
    copies: list[int] = []

    def fake_to_gpu(index, device, resources):
        copies.append(device)
        return ann.faiss.clone_index(index)

    monkeypatch.setattr(vector_index, "gpu_count", lambda: 1)
    monkeypatch.setattr(vector_index, "to_gpu", fake_to_gpu)
    monkeypatch.setattr(vector_index, "GPU_COPIES", vector_index.GpuCopies())
    collection, by_id = make_collection(tmp_path, 3000)
    collection.reindex("IVF32,Flat")
    queries = clustered(30, seed=8)
    on_gpu = collection.search(queries, 10)
    collection.search(queries, 10)
    assert copies == [0]
    on_cpu = collection.search(queries, 10, device="cpu")
    assert np.array_equal(on_gpu[1], on_cpu[1]) and np.allclose(on_gpu[0], on_cpu[0])
    allowed = np.array(sorted(by_id)[::50], dtype=np.int64)
    collection.search(queries, 5, allowed_ids=allowed)  # a filter runs on the CPU
    collection.reindex("IVF16,Flat")
    collection.search(queries, 10)
    assert copies == [0, 0]
    collection.close()
