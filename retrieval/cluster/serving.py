"""Serving an index larger than one node: the image embeddings split into parts held by Ray Serve
deployments; the serving process fans each query out to them and merges the parts' top k.

Part i of K holds the images whose id is i modulo K. Ids are handed out in the order files are
indexed, so contiguous ranges would put each new batch of files (often one folder) in the last
part: that part would grow while the others stand still, and a folder filter would load one
part. Modulo spreads every batch and every folder over all parts, and an image's part never
changes as the collection grows.

A part searches exactly in numpy up to index/exact's limit, and builds a flat FAISS index of its
own past it (a part of tens of millions would build IVF-PQ from a trained sample instead; see
benchmarks/CLUSTER.md). The web app (retrieval.web) runs as without a cluster, in this process
under uvicorn: it encodes each query once and sends the vector to every part through Serve's
handles; only the image index search goes through the parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from index import exact
from index.catalog import IMAGE
from index.collection import Collection, resolve_dir
from index.errors import CollectionError

from .address import ClusterAddress, connected, import_ray, parse_cluster
from .errors import ClusterError

PART_CPUS = 1
"""CPU slots a part's replica reserves: its search is one matrix product on one core."""
SEARCH_TIMEOUT_S = 30.0
START_TIMEOUT_S = 300.0


def merge_top_k(
    parts: list[tuple[np.ndarray, np.ndarray]], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The k best of the parts' results, ordered as one index orders them: by score, best
    first, equal scores by id. Each part is (scores float32 (q, k_i), ids int64 (q, k_i)) with
    id -1 where it had fewer; returns (scores float32 (q, k), ids int64 (q, k)), padded with
    -inf and -1 where all parts together have fewer than k."""
    scores = np.concatenate([np.asarray(s, dtype=np.float32) for s, _ in parts], axis=1)
    ids = np.concatenate([np.asarray(i, dtype=np.int64) for _, i in parts], axis=1)
    merged_scores = np.full((len(scores), k), -np.inf, dtype=np.float32)
    merged_ids = np.full((len(scores), k), -1, dtype=np.int64)
    for q in range(len(scores)):
        found = np.flatnonzero(ids[q] >= 0)
        best = found[np.lexsort((ids[q, found], -scores[q, found]))[:k]]
        merged_scores[q, : len(best)] = scores[q, best]
        merged_ids[q, : len(best)] = ids[q, best]
    return merged_scores, merged_ids


def exact_search(
    queries: np.ndarray, ids: np.ndarray, vectors: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """As index.exact.search: the k best (scores float32 (q, k'), ids int64 (q, k')) of
    queries (q, d) among vectors (n, d) keyed by increasing ids, k' = min(k, n).

    A score here depends on the vector alone, not on its row: BLAS's matrix-vector product
    rounds the last rows of a matrix differently from the others, so two copies of one image
    held by different parts could score a bit apart and lose their order by id. einsum
    (without BLAS) sums every row the same way, as fast for a handful of queries."""
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    best, scores = exact.top_k(np.einsum("qd,nd->qn", queries, vectors), k)
    return scores.astype(np.float32), ids[best]


class ImagePart:
    """One part of a collection's image embeddings (ids i modulo K), searched exactly up to
    EXACT_LIMIT vectors and through a flat FAISS index past it. Reloaded from the collection
    (read only, on storage every node sees) when a query comes from a newer catalog."""

    def __init__(self, collection_dir: str, part: int, parts: int) -> None:
        self.directory = Path(collection_dir)
        self.part, self.parts = part, parts
        self._loading = threading.Lock()
        self.version = -1
        self._load()

    def _load(self) -> None:
        try:
            with Collection.open(self.directory, readonly=True) as collection:
                with collection.catalog.snapshot():
                    version = collection.catalog.version_of(IMAGE)
                    ids, rows = collection.catalog.vector_rows(IMAGE)
                    store = collection.store
                ids_array = np.asarray(ids, dtype=np.int64)
                mine = ids_array % self.parts == self.part
                vectors = store.read(np.asarray(rows, dtype=np.int64)[mine])
                dim = collection.manifest.dim
        except OSError as e:
            raise ClusterError(f"part {self.part} cannot read {self.directory}: {e}") from e
        finite = np.isfinite(vectors).all(axis=1)  # a damaged row is never returned
        self.ids, self.vectors = ids_array[mine][finite], vectors[finite]
        self.index = None
        if len(self.ids) > exact.EXACT_LIMIT:
            from index import ann

            self.index = ann.build("Flat", self.vectors, self.ids, dim=dim)
        self.version = version

    def search(
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None, version: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The part's k best (scores float32 (q, k'), ids int64 (q, k')) for queries float32
        (q, d), among allowed_ids (int64) when given; version: the catalog's image version the
        caller sees."""
        with self._loading:
            if version > self.version:
                self._load()
            ids, vectors, index = self.ids, self.vectors, self.index
        if index is None or (allowed_ids is not None and len(allowed_ids) <= exact.EXACT_LIMIT):
            if allowed_ids is not None:
                keep = np.isin(ids, allowed_ids)
                ids, vectors = ids[keep], vectors[keep]
            return exact_search(queries, ids, vectors, k)
        from index import vector_index

        return vector_index.search(index, queries, k, allowed_ids)

    def size(self) -> int:
        return len(self.ids)


class ImageParts:
    """The application's entry: holds the parts together (one Serve application, deployed and
    removed at once) and says how many images each holds."""

    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts

    async def sizes(self) -> list[int]:
        return list(await asyncio.gather(*(part.size.remote() for part in self.parts)))


class ShardedImages:
    """The image index of retrieval.search.Searcher, answered by the parts: this process is the
    router. It sends the query vector to every part at once (each receives only the allowed ids
    that are its own) and merges their top k.

    A router deployment in between made a search about 6 times as slow (measured in one run on
    2 busy cores, 2 parts of 10,000 512-d vectors: 115 against 20 ms p50)."""

    def __init__(self, entry: Any, parts: list[Any], timeout_s: float = SEARCH_TIMEOUT_S) -> None:
        self._entry = entry
        self._parts = parts
        self.parts = len(parts)
        self._timeout_s = timeout_s

    def search(
        self, queries: np.ndarray, k: int, *, allowed_ids: np.ndarray | None, version: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k best (scores float32 (q, k), ids int64 (q, k)) for queries float32 (q, d)."""
        allowed: list[np.ndarray | None] = [None] * self.parts
        if allowed_ids is not None:
            allowed_ids = np.asarray(allowed_ids, dtype=np.int64)
            allowed = [allowed_ids[allowed_ids % self.parts == i] for i in range(self.parts)]
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        responses = [
            part.search.remote(queries, k, allowed[i], version)
            for i, part in enumerate(self._parts)
        ]
        return merge_top_k([self._call(response) for response in responses], k)

    def sizes(self) -> list[int]:
        """How many images each part holds."""
        return self._call(self._entry.sizes.remote())

    def _call(self, response: Any) -> Any:
        ray = import_ray()
        from ray.serve.exceptions import RayServeException

        try:
            return response.result(timeout_s=self._timeout_s)
        except (ray.exceptions.RayError, RayServeException, TimeoutError) as e:
            reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise CollectionError(f"a part of the sharded index did not answer: {reason}") from e


def check_plan(shards: int, replicas: int, images: int, cluster: ClusterAddress) -> None:
    """Refuse, in one line, a split the collection or a local cluster cannot hold."""
    if shards < 1:
        raise ClusterError(f"--shards {shards}: give at least 1 part")
    if replicas < 1:
        raise ClusterError(f"--replicas {replicas}: give at least 1 replica of each part")
    if images == 0:
        raise ClusterError("the collection holds no images yet; run `retrieval index` first")
    if shards > images:
        raise ClusterError(
            f"--shards {shards}: the collection holds {images} images; give at most {images} parts"
        )
    slots = shards * replicas * PART_CPUS
    if cluster.kind == "local" and cluster.cpus is not None and slots > cluster.cpus:
        raise ClusterError(
            f"--shards {shards} --replicas {replicas} needs {slots} CPU slots and a local "
            f"cluster of {cluster.cpus} has not; use --cluster local:{slots}"
        )


@contextlib.contextmanager
def deployed(
    collection_dir: Path,
    shards: int,
    replicas: int = 1,
    *,
    part_bytes: int = 0,
    part_cpus: float = PART_CPUS,
) -> Iterator[ShardedImages]:
    """The collection's image parts on the Ray cluster this process is connected to, for the
    duration: K deployments of R replicas and their entry, as one Serve application of its own.
    Each replica reserves part_cpus CPU slots and part_bytes of memory (0: no reservation)."""
    from ray import serve

    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    serve.start(proxy_location="Disabled", logging_config={"log_level": "WARNING"})
    options: dict[str, Any] = {"num_cpus": part_cpus}
    if part_bytes:
        options["memory"] = part_bytes  # Ray places each part where its vectors fit
    # A search takes milliseconds: a replica being removed has nothing long to finish.
    quick = {"graceful_shutdown_wait_loop_s": 0.1, "graceful_shutdown_timeout_s": 2.0}
    part = serve.deployment(ImagePart, max_constructor_retry_count=1, **quick)
    entry = serve.deployment(ImageParts, ray_actor_options={"num_cpus": 0}, **quick)
    parts = [
        part.options(name=f"part-{i}", num_replicas=replicas, ray_actor_options=options).bind(
            str(collection_dir), i, shards
        )
        for i in range(shards)
    ]
    name = f"retrieval-{socket.gethostname()}-{os.getpid()}-{id(parts)}"
    try:
        handle = serve.run(entry.bind(parts), name=name, route_prefix=None, blocking=False)
    except RuntimeError as e:
        reason = _failure(name) or str(e).strip().replace("\n", " ")
        _delete(name)
        raise ClusterError(
            f"the parts of {collection_dir} could not start ({reason}); the collection must be "
            "at the same path on every node"
        ) from e
    try:
        handles = [serve.get_deployment_handle(f"part-{i}", name) for i in range(shards)]
        yield ShardedImages(handle, handles)
    finally:
        _delete(name)


def _failure(name: str) -> str | None:
    """Why a deployment of the application failed: the last line of the error a replica's
    start raised, without its exception's module and class (None when Serve says nothing)."""
    from ray import serve

    application = serve.status().applications.get(name)
    for deployment in [] if application is None else application.deployments.values():
        lines = [line.strip() for line in (deployment.message or "").splitlines() if line.strip()]
        if deployment.status != "HEALTHY" and lines:
            return re.sub(r"^(?:\w+\.)+\w+: ", "", lines[-1])
    return None


def _delete(name: str) -> None:
    from ray import serve

    with contextlib.suppress(KeyError):
        serve.delete(name)


def serve_on_cluster(
    collection_dir: Path | None = None,
    *,
    cluster: str = "none",
    shards: int | None = None,
    replicas: int | None = None,
    serve_app: Callable[..., None] | None = None,
    **serve_options: Any,
) -> None:
    """`retrieval serve --cluster ADDR --shards K --replicas R`: the web app of
    retrieval.web.serve (serve_options go to it), its image searches answered by K parts of R
    replicas each on the cluster. Runs until interrupted, then removes the parts."""
    address = parse_cluster(cluster)
    if address.kind == "none":
        raise ClusterError("--shards and --replicas need --cluster (local[:N], auto or ray://)")
    shards, replicas = 1 if shards is None else shards, 1 if replicas is None else replicas
    directory = resolve_dir(collection_dir)
    with Collection.open(directory, readonly=True) as collection:
        images = collection.catalog.count_vectors(IMAGE)
        dim = collection.manifest.dim
    check_plan(shards, replicas, images, address)
    if serve_app is None:
        from ..web import serve as serve_app
    part_bytes = (images // shards + 1) * (dim * 4 + 8) + 64 * 2**20
    with connected(address), deployed(directory, shards, replicas, part_bytes=part_bytes) as index:
        serve_app(directory, image_index=index, **serve_options)
