"""Serving a collection split into parts on Ray Serve answers what one index answers.

One private Ray cluster (4 CPU slots) and one Serve instance serve the whole module; each test
deploys its parts and removes them at the end. The references are brute force in numpy over the
vectors the test wrote, and the single-process app for the HTTP API.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.serve")
import httpx
from fastapi.testclient import TestClient

from index.collection import Collection
from retrieval.cluster import ClusterError, parse_cluster
from retrieval.cluster.address import connected
from retrieval.cluster.serving import check_plan, deployed, merge_top_k
from retrieval.search import Searcher
from retrieval.web import create_app

WORKTREE = Path(__file__).resolve().parent.parent
RETRIEVAL = Path(sys.executable).parent / "retrieval"
FOLDERS = ("beach", "city", "forest")
IMAGES = 40
PART_CPUS = 0.5
"""Per replica: the module's deployments fit the 4 CPU slots of its cluster together."""
DUPLICATED = (3, 8)
"""Items 8 and 9 (ids) hold the same vector as items 3 and 4: equal scores, in other parts."""


@pytest.fixture(scope="module")
def ray_serve():
    from ray import serve

    with connected(parse_cluster("local:4")):
        try:
            yield
        finally:
            serve.shutdown()


def write_collection(folder: Path, model, dim: int, n: int = IMAGES) -> tuple[Path, dict]:
    """n unit vectors (two of them copies of others) in three folders; returns the collection's
    folder and, per id, (path, vector)."""
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    if n > DUPLICATED[1] + 1:
        vectors[DUPLICATED[1] : DUPLICATED[1] + 2] = vectors[DUPLICATED[0] : DUPLICATED[0] + 2]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    directory = folder / ".retrieval"
    collection = Collection.create(
        directory, root=folder, model=model, dim=dim, embedding_dtype="float32"
    )
    with collection.locked(), collection.catalog.transaction():
        first = collection.catalog.reserve_rows(n)
        collection.store.write(first, vectors)
        for i in range(n):
            collection.catalog.put_ok(
                f"{FOLDERS[i % 3]}/p{i:03d}.jpg", 1, 1, f"h{i}", 8, 8, first + i
            )
    with Collection.open(directory, readonly=True) as opened:
        items = {item.row: item for item in opened.catalog.items()}
    collection.close()
    return directory, {items[first + i].id: (items[first + i].path, vectors[i]) for i in range(n)}


@pytest.fixture(scope="module")
def photos(tmp_path_factory, encoder) -> tuple[Path, dict]:
    dim = encoder.encode_texts(["x"]).shape[1]
    return write_collection(tmp_path_factory.mktemp("photos"), encoder.identity, dim)


def brute_force(
    items: dict, query: np.ndarray, k: int, folder: str = ""
) -> list[tuple[int, float]]:
    """The k best (id, score) by a plain loop: score descending, then id ascending."""
    scored = [
        (-float(np.dot(vector.astype(np.float64), query)), item_id)
        for item_id, (path, vector) in items.items()
        if path.startswith(folder)
    ]
    return [(item_id, -negative) for negative, item_id in sorted(scored)[:k]]


def query_vectors(items: dict, dim: int) -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    random = rng.normal(size=(4, dim)).astype(np.float32)
    random /= np.linalg.norm(random, axis=1, keepdims=True)
    duplicated = sorted(items)[DUPLICATED[0]]
    return [*random, items[duplicated][1]]  # the last one ties two items at the top


def assert_same_hits(got, expected: list[tuple[int, float]]) -> None:
    assert [h.id for h in got] == [item_id for item_id, _ in expected]
    np.testing.assert_allclose([h.score for h in got], [s for _, s in expected], atol=1e-6)


@pytest.fixture(scope="module")
def three_parts(ray_serve, photos):
    with deployed(photos[0], 3, part_cpus=PART_CPUS) as parts:
        yield parts


def assert_sharded_equals_one_index(directory: Path, items: dict, parts, shards: int) -> None:
    dim = len(next(iter(items.values()))[1])
    with Searcher.open(directory) as single, Searcher.open(directory, image_index=parts) as sharded:
        for query in query_vectors(items, dim):
            for k in (1, 5, 17, len(items) + 5):  # 17 and more are more than one part holds
                expected = brute_force(items, query, k)
                assert_same_hits(single.search_vector(query, k=k), expected)
                assert_same_hits(sharded.search_vector(query, k=k), expected)
            in_city = brute_force(items, query, 9, folder="city/")
            assert_same_hits(sharded.search_vector(query, k=9, prefix="city"), in_city)
    # part i holds the ids that are i modulo the number of parts
    assert parts.sizes() == [sum(i % shards == part for i in items) for part in range(shards)]


def test_three_parts_return_what_one_index_returns(three_parts, photos):
    assert_sharded_equals_one_index(*photos, three_parts, 3)


def test_two_parts_of_two_replicas_return_what_one_index_returns(ray_serve, photos):
    with deployed(photos[0], 2, 2, part_cpus=PART_CPUS) as parts:
        assert_sharded_equals_one_index(*photos, parts, 2)


def test_merge_orders_equal_scores_by_id_and_pads_missing_results():
    part_a = (np.array([[0.9, 0.5, -np.inf]], np.float32), np.array([[7, 2, -1]]))
    part_b = (np.array([[0.9, 0.7]], np.float32), np.array([[4, 5]]))
    scores, ids = merge_top_k([part_a, part_b], 6)
    assert ids.tolist() == [[4, 7, 5, 2, -1, -1]]
    assert scores[0, :4].tolist() == pytest.approx([0.9, 0.9, 0.7, 0.5])
    assert np.isneginf(scores[0, 4:]).all()


def test_two_parts_pick_up_images_committed_after_they_started(ray_serve, tmp_path, encoder):
    dim = encoder.encode_texts(["x"]).shape[1]
    directory, items = write_collection(tmp_path / "growing", encoder.identity, dim, n=12)
    with deployed(directory, 2, part_cpus=PART_CPUS) as parts:
        assert_sharded_equals_one_index(directory, items, parts, 2)
        query = query_vectors(items, dim)[0]
        late = np.stack([-query, query])  # the worst match there can be, then the best
        with Collection.open(directory) as collection, collection.locked():
            collection.append_images(late, _new_images(["city/late0.jpg", "city/late1.jpg"]))
        with Collection.open(directory, readonly=True) as opened:
            for item in opened.catalog.items():
                if item.id not in items:
                    items[item.id] = (item.path, opened.store.read([item.row])[0])
        assert len(items) == 14
        assert_sharded_equals_one_index(directory, items, parts, 2)


def _new_images(paths: list[str]) -> list:
    from index.collection import NewImage

    return [NewImage(path=p, size=1, mtime_ns=1, hash=f"new{p}", width=8, height=8) for p in paths]


def test_http_api_answers_as_the_single_process_app(three_parts, photos, encoder):
    directory, items = photos
    requests = [
        ("/api/search", {"q": "a red square", "k": 17}),
        ("/api/search", {"q": "a dog - a cat", "k": 5, "folder": "forest"}),
        (f"/api/items/{sorted(items)[DUPLICATED[0]]}/similar", {"k": 6}),
        (f"/api/items/{sorted(items)[0]}/similar", {"k": 50}),
    ]
    single_app = create_app(directory, encoder=encoder)
    with TestClient(single_app) as single:
        expected = [single.get(path, params=params).json() for path, params in requests]
    single_app.state.engine.close()
    app = create_app(directory, encoder=encoder, image_index=three_parts)
    with _running(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        got = [client.get(path, params=params) for path, params in requests]
    app.state.engine.close()
    assert [r.status_code for r in got] == [200] * len(requests)
    assert [r.json() for r in got] == expected
    assert len(expected[0]) == 17 and len(expected[3]) == IMAGES - 1


class _running:
    """The app under uvicorn on a free loopback port, in a thread, for the duration."""

    def __init__(self, app) -> None:
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        config = uvicorn.Config(app, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]})

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def test_a_split_the_collection_cannot_hold_is_refused():
    local = parse_cluster("local:4")
    for shards, replicas, message in [
        (0, 1, "--shards 0: give at least 1 part"),
        (1, 0, "--replicas 0: give at least 1 replica"),
        (9, 1, "--shards 9: the collection holds 8 images; give at most 8 parts"),
        (3, 2, "needs 6 CPU slots and a local cluster of 4 has not"),
    ]:
        with pytest.raises(ClusterError, match=message):
            check_plan(shards, replicas, 8, local)
    check_plan(2, 2, 8, local)


def test_cli_refuses_a_bad_number_of_shards_in_one_line(photos):
    directory, _ = photos
    env = {**os.environ, "PYTHONPATH": str(WORKTREE), "HF_HUB_OFFLINE": "1"}
    for options, message in [
        (["--cluster", "local:2", "--shards", "41"], "--shards 41: the collection holds 40 images"),
        (["--cluster", "local:2", "--shards", "0"], "--shards 0: give at least 1 part"),
        (["--shards", "2"], "--shards and --replicas need --cluster"),
    ]:
        run = subprocess.run(
            [str(RETRIEVAL), "serve", "--index", str(directory), *options],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert run.returncode == 1, run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), run.stderr


def test_a_part_that_cannot_open_the_collection_stops_the_start_in_one_line(ray_serve, tmp_path):
    missing = tmp_path / "not-on-this-node" / ".retrieval"
    with (
        pytest.raises(ClusterError, match="could not start") as raised,
        deployed(missing, 1, part_cpus=PART_CPUS),
    ):
        pass
    message = str(raised.value)
    assert len(message.splitlines()) == 1 and "is not a collection" in message, message
    assert "index.errors" not in message
