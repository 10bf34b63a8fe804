"""Indexing on a local Ray cluster ends where indexing in one process ends.

One private Ray cluster (4 CPU slots: more slots than this machine's 2 cores, which keeps Ray
clear of the hangs it has on 2-slot clusters) serves the whole module; every run here joins it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import write_photos

pytest.importorskip("ray")

from index.collection import Collection, default_dir
from retrieval.cluster import ClusterError, index_on_cluster, parse_cluster
from retrieval.cluster.address import connected
from retrieval.cluster.work import encode_shard, probe
from retrieval.indexer import index_folder
from retrieval.search import Searcher

WORKTREE = Path(__file__).resolve().parent.parent
PHOTOS = [f"dir{i % 3}/photo{i:02d}.jpg" for i in range(24)] + ["flat.png", "z/last.jpg"]


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    with connected(parse_cluster("local:4")):
        yield ray.get_runtime_context().gcs_address


def make_root(folder: Path) -> Path:
    """Photos, a copy of one, and files that cannot be read, each for its own reason."""
    write_photos(folder, PHOTOS)
    shutil.copy(folder / PHOTOS[0], folder / "copy of photo00.jpg")
    (folder / "not-an-image.jpg").write_text("this is text")
    (folder / "empty.png").write_bytes(b"")
    data = (folder / PHOTOS[1]).read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    return folder


def rows(root: Path) -> dict[str, tuple]:
    """Per path: (size, hash, width, height, status, error) and its stored vector."""
    with Collection.open(default_dir(root), readonly=True) as collection:
        items = collection.catalog.items()
        return {
            i.path: (
                (i.size, i.hash, i.width, i.height, i.status, i.error),
                None if i.row is None else collection.store.read([i.row])[0].astype(np.float32),
            )
            for i in items
        }


def assert_same_rows(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for path, (fields, vector) in expected.items():
        assert got[path][0] == fields, path
        if vector is None:
            assert got[path][1] is None, path
        else:  # batches of another size may round the last float16 bit differently
            np.testing.assert_allclose(got[path][1], vector, atol=2e-3)


def hits(root: Path, queries: np.ndarray) -> list[list[tuple[str, float]]]:
    with Searcher.open(default_dir(root)) as searcher:
        return [
            [
                (Path(h.path).relative_to(root).as_posix(), h.score)
                for h in searcher.search_vector(q, k=10)
            ]
            for q in queries
        ]


def assert_same_hits(got: list, expected: list) -> None:
    """Same paths in the same order, scores within 1e-3; two results may trade places only
    when their scores are that close (a tie)."""
    for got_hits, expected_hits in zip(got, expected, strict=True):
        assert len(got_hits) == len(expected_hits)
        np.testing.assert_allclose([s for _, s in got_hits], [s for _, s in expected_hits],
                                   atol=1e-3)  # fmt: skip
        expected_scores = dict(expected_hits)
        for rank, ((path, score), (other, _)) in enumerate(
            zip(got_hits, expected_hits, strict=True)
        ):
            if path != other:
                assert abs(expected_scores.get(path, -9) - score) < 1e-3, (rank, path, other)


def queries(dim: int, n: int = 6) -> np.ndarray:
    vectors = np.random.default_rng(7).standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model) -> Path:
    root = make_root(tmp_path_factory.mktemp("reference"))
    index_folder(root, model=tiny_model, batch_size=8)
    return root


def test_local_cluster_gives_the_rows_and_search_results_of_one_process(
    tmp_path, tiny_model, reference, ray_cluster
):
    root = make_root(tmp_path / "photos")
    report = index_on_cluster(root, cluster="local:4", shard_size=5, model=tiny_model)
    assert_same_rows(rows(root), rows(reference))
    dim = next(v for _, v in rows(reference).values() if v is not None).shape[0]
    assert_same_hits(hits(root, queries(dim)), hits(reference, queries(dim)))
    assert report.added == len(PHOTOS) + 1
    assert report.encoded == len(PHOTOS) + 1  # a new copy is encoded, as in one process
    assert {s.path for s in report.skipped} == {"not-an-image.jpg", "empty.png", "truncated.jpg"}
    assert not (default_dir(root) / "shards").exists()
    # Capture times come back with the shards: the driver reads no header again.
    assert report.dated == 0
    assert capture_sources(root) == capture_sources(reference)


def capture_sources(root: Path) -> dict[str, str]:
    with Collection.open(default_dir(root), readonly=True) as collection:
        items = {i.id: i.path for i in collection.catalog.items() if i.status == "ok"}
        return {items[i]: c.source for i, c in collection.catalog.capture_of(items).items()}


def test_bad_files_are_skipped_with_their_reasons_not_failed_shards(
    tmp_path, tiny_model, reference, ray_cluster
):
    root = make_root(tmp_path / "photos")
    index_on_cluster(root, cluster="local:4", shard_size=2, model=tiny_model)
    got = {p: fields[-1] for p, (fields, _) in rows(root).items() if fields[-1] is not None}
    expected = {p: fields[-1] for p, (fields, _) in rows(reference).items() if fields[-1]}
    assert got == expected
    assert set(got) == {"not-an-image.jpg", "empty.png", "truncated.jpg"}


def test_a_second_cluster_run_encodes_only_new_and_changed_files(tmp_path, tiny_model,
                                                                  ray_cluster):  # fmt: skip
    roots = [make_root(tmp_path / "one"), make_root(tmp_path / "cluster")]
    index_folder(roots[0], model=tiny_model, batch_size=8)
    index_on_cluster(roots[1], cluster="local:4", shard_size=4, model=tiny_model)
    for root in roots:
        write_photos(root, ["new/a.jpg", "new/b.jpg"], first_seed=100)
        os.rename(root / PHOTOS[2], root / "moved.jpg")
        os.rename(root / PHOTOS[3], root / "new/moved too.jpg")
        write_photos(root, [PHOTOS[4]], first_seed=200)  # changed content
        (root / PHOTOS[5]).unlink()
    index_folder(roots[0], model=tiny_model, batch_size=8)
    report = index_on_cluster(roots[1], cluster="local:4", shard_size=4, model=tiny_model)
    assert (report.encoded, report.renamed, report.added, report.updated) == (3, 2, 2, 1)
    assert report.removed == 1
    assert_same_rows(rows(roots[1]), rows(roots[0]))


def encode_dying_once(task, known_hashes):
    """encode_shard, but the worker process dies the first time it meets the first shard."""
    marker = Path(task.shards_dir).parent.parent.parent / "died-once"
    if any(f.path == PHOTOS[0] for f in task.shard.files) and not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)
    return encode_shard(task, known_hashes)


def test_a_worker_that_dies_is_retried_and_nothing_is_lost(tmp_path, tiny_model, reference,
                                                           ray_cluster):  # fmt: skip
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    root = make_root(tmp_path / "photos")
    index_on_cluster(root, cluster="local:4", shard_size=6, model=tiny_model,
                     encode=encode_dying_once)  # fmt: skip
    assert (tmp_path / "died-once").exists()
    assert_same_rows(rows(root), rows(reference))


KILLED_DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    from retrieval.cluster import index_on_cluster
    from retrieval.encoders.identity import model_identity

    def progress(event):
        if event.phase == "encode":  # the first shard is committed: die here, with no warning
            os.kill(os.getpid(), signal.SIGKILL)

    index_on_cluster(sys.argv[1], cluster="auto", model=model_identity(sys.argv[2]),
                     progress=progress)
    """
)


def test_a_killed_driver_run_again_encodes_only_the_shards_not_done(
    tmp_path, tiny_model, reference, ray_cluster
):
    # Shards of the default size: the run again plans the shards of the run killed, although it
    # has fewer files to encode.
    root = make_root(tmp_path / "photos")
    env = {**os.environ, "RAY_ADDRESS": ray_cluster, "PYTHONPATH": str(WORKTREE)}
    killed = subprocess.run([sys.executable, "-c", KILLED_DRIVER, str(root), tiny_model.name],
                            env=env, capture_output=True, text=True, timeout=240)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    committed = [f for f, v in rows(root).values() if v is not None]
    shards = default_dir(root) / "shards"
    kept = [json.loads(p.read_text()) for p in shards.glob("shard-*.json")]
    kept_encoded = sum(record["encoded"] for record in kept)
    encodable = len(PHOTOS) + 1
    assert committed and len(committed) < encodable

    again = subprocess.run(
        [str(Path(sys.executable).parent / "retrieval"), "index", str(root), "--cluster", "auto",
         "--json"],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    encoded = json.loads(again.stdout.splitlines()[-1])["encoded"]
    # Workers of the killed run may still finish a shard after it died; never more than this.
    assert encoded <= encodable - len(committed) - kept_encoded
    assert_same_rows(rows(root), rows(reference))
    assert not shards.exists()


def test_a_worker_that_cannot_see_the_files_says_so(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "probe").write_text("token")
    assert probe(str(tmp_path), str(shards), "token", None) is None
    assert "cannot see /nowhere" in probe("/nowhere", str(shards), "token", None)
    assert "cannot read a.jpg" in probe(str(tmp_path), str(shards), "token", ("a.jpg", 10))
    assert "collection" in probe(str(tmp_path), str(shards), "another token", None)


def test_a_bad_cluster_address_is_refused_before_anything_starts():
    for text in ("lokal", "local:0", "ray://", "http://head:10001"):
        with pytest.raises(ClusterError, match="--cluster"):
            parse_cluster(text)
    assert parse_cluster("local:3").cpus == 3
    assert parse_cluster("ray://head:10001").address == "ray://head:10001"


def test_the_single_process_path_never_imports_ray():
    code = "import sys, cli, retrieval.indexer, retrieval.cluster; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(WORKTREE)}, cwd=WORKTREE)  # fmt: skip
    assert out.stdout.strip() == "False", out.stderr


def test_shards_done_by_an_earlier_run_are_read_back_not_encoded_again(
    tmp_path, tiny_model, reference, ray_cluster
):
    from retrieval.cluster.shards import plan_shards
    from retrieval.cluster.work import ModelSpec, ShardTask
    from retrieval.scan import scan

    root = make_root(tmp_path / "photos")
    shards_dir = default_dir(root) / "shards"
    shards_dir.mkdir(parents=True)
    plan = plan_shards(list(scan(root)), 4)
    earlier = 0
    for shard in plan[1::3]:  # as a stopped run leaves them: done, not committed
        task = ShardTask(str(root), str(shards_dir), shard, ModelSpec(tiny_model, None), 8, 1, True)
        earlier += encode_shard(task, frozenset()).encoded
    assert earlier > 0
    report = index_on_cluster(root, cluster="local:4", shard_size=4, model=tiny_model)
    assert report.encoded == len(PHOTOS) + 1 - earlier
    assert_same_rows(rows(root), rows(reference))


def test_the_default_shard_size_gives_each_slot_at_least_four_shards():
    from retrieval.cluster.shards import MAX_SHARD_SIZE, auto_shard_size

    assert auto_shard_size(96, 2) == 12  # 8 shards: 4 rounds of 2
    assert auto_shard_size(30, 4) == 2  # 15 shards on 4 slots
    assert auto_shard_size(3, 8) == 1
    assert auto_shard_size(1_000_000, 8) == 9_616  # 104 shards: 13 rounds of 8
    for files in (1, 7, 96, 10_001, 80_001, 2_500_000):
        for slots in (1, 2, 3, 8, 64):
            size = auto_shard_size(files, slots)
            shards = -(-files // size)
            assert 1 <= size <= MAX_SHARD_SIZE
            # whole shards round the count down by less than a round of the slots
            assert shards == files or shards > 3 * slots, (files, slots)


def test_a_run_again_keeps_the_shard_size_of_the_run_stopped(tmp_path):
    from retrieval.cluster.shards import remembered_size

    assert remembered_size(tmp_path, 12) == 12
    assert remembered_size(tmp_path, 5) == 12  # fewer files left: the first run's shards
    (tmp_path / "size.json").write_text("{not json")
    assert remembered_size(tmp_path, 5) == 5


def test_a_task_limited_to_its_cpu_slot_encodes_what_one_on_every_core_encodes(
    tmp_path, tiny_model
):
    from retrieval.cluster.shards import plan_shards, read_shard
    from retrieval.cluster.work import ModelSpec, ShardTask, cached_encoder
    from retrieval.scan import scan

    root = make_root(tmp_path / "photos")
    (shard,) = plan_shards(list(scan(root)), 100)
    vectors = {}
    for threads in (None, 1):
        folder = tmp_path / f"shards-{threads}"
        folder.mkdir()
        task = ShardTask(str(root), str(folder), shard, ModelSpec(tiny_model, None), 8, None, True,
                         threads)  # fmt: skip
        summary = encode_shard(task, frozenset())
        assert summary.encoded == len(PHOTOS) + 1
        assert threads is None or not summary.warm  # a model of its own, made for one thread
        vectors[threads] = read_shard(folder, shard).vectors
    encoder, warm = cached_encoder(ModelSpec(tiny_model, None), 1)
    assert warm and getattr(encoder, "threads", 1) == 1
    np.testing.assert_allclose(vectors[1], vectors[None], atol=1e-5)
