"""Reindexing on a local Ray cluster builds the index one process builds.

Trained once on the driver, filled by tasks in ranges of the stored vectors, merged in order:
the parallel IVF index answers every query as the single-process one does, and both are
checked against brute force in numpy. One private Ray cluster serves the whole module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_cli import assert_one_line_error, cli

pytest.importorskip("ray")

from index import ann, parts, vector_index
from index.collection import Collection, NewImage
from index.manifest import ModelIdentity
from index.vectors import EmbeddingStore
from retrieval.cluster import ClusterError, parse_cluster
from retrieval.cluster.address import connected
from retrieval.cluster.reindexing import REINDEX_DIRNAME, add_part, reindex_on_cluster
from retrieval.upkeep import reindex

WORKTREE = Path(__file__).resolve().parent.parent
DIM = 32
N = 3000
IVF_FLAT, IVF_PQ = "IVF16,Flat", "IVF16,PQ8x4"


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    with connected(parse_cluster("local:4")):
        yield ray.get_runtime_context().gcs_address


def unit_vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(24, DIM))
    x = centres[rng.integers(0, 24, n)] + 0.6 * rng.normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_collection(directory: Path, vectors: np.ndarray) -> Path:
    """A collection holding vectors (float16, as the indexer stores them), committed in two
    appends as two index runs would."""
    collection = Collection.create(directory, root=directory.parent, model=ModelIdentity("m"),
                                   dim=DIM)  # fmt: skip
    with collection, collection.locked():
        for start, stop in ((0, len(vectors) // 3), (len(vectors) // 3, len(vectors))):
            files = [NewImage(f"f/{i}.jpg", 1, 1, f"h{i}", 1, 1) for i in range(start, stop)]
            collection.append_images(vectors[start:stop], files)
    return directory


def searched(directory: Path, queries: np.ndarray, nprobe: int = 4):
    """(scores, ids) of the saved FAISS index at nprobe, and the stored (ids, vectors)."""
    with Collection.open(directory, readonly=True) as collection:
        index = vector_index.load(directory / "index.faiss")
        scores, found = vector_index.search(index, queries, 10, params={"nprobe": nprobe})
        ids, stored, _ = collection.vectors()
        return scores, found, ids, stored, collection.manifest


def recall(found: np.ndarray, ids: np.ndarray, stored: np.ndarray, queries: np.ndarray) -> float:
    """Mean recall@10 against brute force in numpy."""
    truth = ids[np.argsort(-(queries @ stored.T), axis=1, kind="stable")[:, :10]]
    return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict[str, Path]:
    """Per factory, a collection reindexed in one process (built when first asked for)."""

    class Built(dict):
        def __missing__(self, factory: str) -> Path:
            directory = make_collection(tmp_path_factory.mktemp("one") / "c", unit_vectors(N, 1))
            reindex(directory, factory=factory)
            self[factory] = directory
            return directory

    return Built()


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return unit_vectors(40, seed=9)


def assert_same_index(directory: Path, reference: Path, queries: np.ndarray) -> None:
    scores, found, ids, stored, manifest = searched(directory, queries)
    ref_scores, ref_found, ref_ids, ref_stored, ref_manifest = searched(reference, queries)
    np.testing.assert_array_equal(found, ref_found)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    assert recall(found, ids, stored, queries) == recall(ref_found, ref_ids, ref_stored, queries)
    assert (manifest.factory, manifest.search_params) == (
        ref_manifest.factory, ref_manifest.search_params)  # fmt: skip
    assert manifest.index_version == ref_manifest.index_version


@pytest.mark.parametrize("factory", [IVF_FLAT, IVF_PQ])
def test_a_parallel_build_answers_as_the_single_process_build(
    tmp_path, factory, references, queries, ray_cluster
):
    directory = make_collection(tmp_path / "c", unit_vectors(N, seed=1))
    events = []
    tuning = reindex_on_cluster(directory, cluster="local:4", factory=factory, shard_size=700,
                                progress=events.append)  # fmt: skip
    assert_same_index(directory, references[factory], queries)
    assert ("shard", 5, 5) in [(e.phase, e.done, e.total) for e in events]
    if factory == IVF_FLAT:  # every list probed: exact search
        _, found, ids, stored, _ = searched(directory, queries, nprobe=16)
        assert recall(found, ids, stored, queries) == 1.0
    assert tuning.parameter == "nprobe"
    assert not (directory / REINDEX_DIRNAME).exists()


@pytest.mark.parametrize("factory", [IVF_FLAT, "IVF16,PQ8x4", "OPQ4,IVF16,PQ4x4", "IVF16,SQ8"])
def test_parts_merged_in_order_are_the_index_one_process_fills(tmp_path, factory):
    vectors = unit_vectors(1000, seed=4)
    store = EmbeddingStore(tmp_path / "e.bin", DIM, "float16")
    store.write(0, vectors)
    rows, ids = np.arange(1000), np.arange(1000) * 7 + 3
    trained = parts.to_bytes(ann.trained(factory, store.view(rows), ids, dim=DIM))
    whole = parts.from_bytes(trained)
    ann.add_rows(whole, store.view(rows), ids, 0, 1000)  # as ann.build adds them
    ranges = [(0, 300), (300, 301), (301, 1000)]
    filled = [parts.fill(trained, store, rows[a:b], ids[a:b], threads=1) for a, b in ranges]
    assert parts.to_bytes(parts.merged(trained, filled)) == parts.to_bytes(whole)


def add_dying_once(task):
    """add_part, but the worker process dies the first time it meets the first range."""
    marker = Path(task.folder).parent.parent / "died-once"
    if task.name.startswith("part-000000000000") and not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)
    return add_part(task)


def add_counting(task):
    """add_part, leaving a line in `filled` beside the collection for every range it fills."""
    with open(Path(task.folder).parent.parent / "filled", "a") as log:
        log.write(task.name + "\n")
    return add_part(task)


def test_a_part_whose_worker_dies_is_retried(tmp_path, references, queries, ray_cluster):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    directory = make_collection(tmp_path / "c", unit_vectors(N, seed=1))
    reindex_on_cluster(directory, cluster="local:4", factory=IVF_PQ, shard_size=1000,
                       add=add_dying_once)  # fmt: skip
    assert (tmp_path / "died-once").exists()
    assert_same_index(directory, references[IVF_PQ], queries)


class Stop(Exception):
    """Raised from the progress callback: the driver stops, as a killed one would."""


def test_a_stopped_run_again_fills_only_the_parts_not_done(
    tmp_path, references, queries, ray_cluster
):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    directory = make_collection(tmp_path / "c", unit_vectors(N, seed=1))

    def stop_before_merging(event) -> None:
        if event.phase == "merge":
            raise Stop

    with pytest.raises(Stop):
        reindex_on_cluster(directory, cluster="local:4", factory=IVF_FLAT, shard_size=700,
                           add=add_counting, progress=stop_before_merging)  # fmt: skip
    folder = directory / REINDEX_DIRNAME
    marks = sorted(folder.glob("part-*.json"))
    assert len(marks) == 5 and len((tmp_path / "filled").read_text().split()) == 5
    damaged = marks[2].with_suffix(".index")
    damaged.write_bytes(damaged.read_bytes()[:-10])
    # A part marked done for another trained index is never merged: it is filled again.
    other = json.loads(marks[4].read_text())
    marks[4].write_text(json.dumps({**other, "trained": "0" * 64}))
    (tmp_path / "filled").unlink()

    reindex_on_cluster(directory, cluster="local:4", factory=IVF_FLAT, shard_size=700,
                       add=add_counting)  # fmt: skip
    refilled = sorted((tmp_path / "filled").read_text().split())
    assert refilled == [marks[2].stem, marks[4].stem]
    assert_same_index(directory, references[IVF_FLAT], queries)


def test_an_hnsw_index_is_built_on_the_driver_and_says_so(tmp_path, queries, ray_cluster):
    vectors = unit_vectors(1000, seed=3)
    one, parallel = make_collection(tmp_path / "one", vectors), make_collection(tmp_path / "p",
                                                                               vectors)  # fmt: skip
    reindex(one, factory="HNSW16")
    events = []
    reindex_on_cluster(parallel, cluster="local:4", factory="HNSW16", progress=events.append)
    notes = [e.message for e in events if e.phase == "note"]
    assert len(notes) == 1 and "HNSW16 is not split by inverted lists" in notes[0]
    with Collection.open(one) as a, Collection.open(parallel) as b:
        expected, got = a.search(queries, 10), b.search(queries, 10)
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_allclose(got[0], expected[0], atol=1e-5)


def test_bad_input_is_refused_in_one_line_before_ray_starts(tmp_path, ray_cluster):
    env = {"PYTHONPATH": str(WORKTREE)}
    missing = cli("reindex", "--index", str(tmp_path / "nowhere"), "--cluster", "local:2",
                  env=env)  # fmt: skip
    assert_one_line_error(missing, "nowhere", "is not a collection")
    directory = make_collection(tmp_path / "c", unit_vectors(100, seed=2))
    zero = cli("reindex", "--index", str(directory), "--cluster", "local:2", "--shard-size", "0",
               env=env)  # fmt: skip
    assert_one_line_error(zero, "--shard-size must be at least 1, not 0")
    with pytest.raises(ClusterError, match="--cluster"):
        reindex_on_cluster(directory, cluster="lokal")
    assert not (directory / REINDEX_DIRNAME).exists()


def test_reindex_without_a_cluster_never_imports_ray(tmp_path):
    directory = make_collection(tmp_path / "c", unit_vectors(100, seed=2))
    code = (
        "import sys; from retrieval.cluster.reindexing import reindex_on_cluster; "
        f"reindex_on_cluster({str(directory)!r}, factory='Flat'); print('ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(WORKTREE)})  # fmt: skip
    assert out.stdout.strip() == "False", out.stderr
