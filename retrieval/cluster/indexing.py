"""Indexing on a Ray cluster: the driver plans and commits, the workers decode and encode.

`index_on_cluster` runs the ordinary `index_folder` (scan, incremental plan, renames by hash,
commits through `Collection.append_images`) with a `ShardedEncoder`, which sends the new and
changed files out as shards and hands back each finished shard, in plan order, for the commit.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from index.atomic import write_bytes_atomic

from ..indexer import index_folder
from ..remote_encoding import EncodedBatch, EncodeRequest
from ..reports import IndexProgress, IndexReport
from .address import connected, import_ray, parse_cluster
from .errors import ClusterError
from .shards import (
    SHARDS_DIRNAME,
    Shard,
    ShardResult,
    auto_shard_size,
    plan_shards,
    read_shard,
    remembered_size,
    remove_all_but,
)
from .shards import remove_shard as drop_shard
from .work import ModelSpec, ShardSummary, ShardTask, encode_shard, probe

DEFAULT_SHARD_SIZE = None  # chosen from the files and the cluster's slots: auto_shard_size
CPUS_PER_TASK = 1  # a task's CPU slots, and so its threads (retrieval.cluster.work.ShardTask)
ShardFunction = Callable[[ShardTask, frozenset], ShardSummary]


def index_on_cluster(
    root: Path,
    *,
    cluster: str,
    shard_size: int | None = DEFAULT_SHARD_SIZE,
    retries: int = 3,
    device: str = "auto",
    precision: str = "auto",
    backend: str = "auto",
    decode: str = "auto",
    encode: ShardFunction = encode_shard,
    on_shard: Callable[[ShardSummary], None] | None = None,
    **options: Any,
) -> IndexReport:
    """index_folder(root, **options), with the files to encode sent to the Ray cluster at
    `cluster` (local, local:N, auto, ray://HOST:PORT; none runs it in this process).

    shard_size: files per task (None: SHARDS_PER_SLOT shards per CPU or GPU slot of the cluster,
    at most MAX_SHARD_SIZE files each; a run stopped and run again keeps its size).
    retries: how often Ray runs a task again whose worker died.
    encode: the function a task runs (retrieval.cluster.work.encode_shard).
    on_shard: called on the driver with each shard's ShardSummary as it finishes.
    """
    address = parse_cluster(cluster)
    model_options = {"device": device, "precision": precision, "backend": backend}
    if address.kind == "none":
        return index_folder(root, decode=decode, **model_options, **options)
    if decode == "gpu":
        raise ClusterError("--decode gpu runs in one process; leave it out with --cluster")
    if shard_size is not None and shard_size < 1:
        raise ClusterError(f"--shard-size must be at least 1, not {shard_size}")
    sharded = ShardedEncoder(shard_size=shard_size, retries=retries, encode=encode,
                             on_shard=on_shard, **model_options)  # fmt: skip
    with connected(address):
        return index_folder(root, encode_files=sharded, **model_options, **options)


class ShardedEncoder:
    """A FileEncoder that runs shards of files as Ray tasks and yields them back in order.

    A shard already done (its results kept by a run that was killed) is read back, not sent
    again; a shard is removed from `shards/` once committed."""

    def __init__(self, *, shard_size: int | None, retries: int, encode: ShardFunction,
                 device: str, precision: str, backend: str,
                 on_shard: Callable[[ShardSummary], None] | None = None) -> None:  # fmt: skip
        self.shard_size = shard_size
        self.retries = retries
        self.encode = encode
        self.on_shard = on_shard or (lambda _summary: None)
        self.model_options = {"device": device, "precision": precision, "backend": backend}

    def __call__(self, request: EncodeRequest) -> Iterator[EncodedBatch]:
        ray = import_ray()
        folder = request.collection.dir / SHARDS_DIRNAME
        folder.mkdir(exist_ok=True)
        check_workers(request, folder)
        size = self.shard_size or remembered_size(
            folder, auto_shard_size(len(request.files), slots(ray, self.gpus()))
        )
        shards = plan_shards(request.files, size)
        done = {i: r for i, s in enumerate(shards) if (r := read_shard(folder, s)) is not None}
        resumed = set(done)  # done by an earlier run that was stopped
        todo = [(i, s) for i, s in enumerate(shards) if i not in done]
        pending = self._submit(request, folder, todo)
        finished = len(done)
        files_done = 0
        request.progress(IndexProgress("shard", finished, len(shards)))
        for i, shard in enumerate(shards):
            waited = time.perf_counter()
            while i not in done:
                ready, _ = ray.wait(list(pending), num_returns=1)
                j = pending.pop(ready[0])
                done[j] = self._collect(ray, ready[0], folder, shards[j])
                finished += 1
                request.progress(IndexProgress("shard", finished, len(shards)))
            yield done.pop(i).batch(time.perf_counter() - waited, resumed=i in resumed)
            drop_shard(folder, shard.name)  # committed: the next line of the plan
            files_done += len(shard.files)
            request.progress(IndexProgress("encode", files_done, len(request.files)))
        remove_all_but(folder, set())

    def _submit(self, request: EncodeRequest, folder: Path,
                shards: Sequence[tuple[int, Shard]]) -> dict[Any, int]:  # fmt: skip
        ray = import_ray()
        if not shards:
            return {}
        manifest = request.collection.manifest
        model = ModelSpec(manifest.model, manifest.weights_hash, **self.model_options)
        gpus = self.gpus()
        cpus = 0 if gpus else CPUS_PER_TASK
        remote = ray.remote(self.encode).options(
            max_retries=self.retries, num_cpus=cpus, num_gpus=1 if gpus else 0
        )
        known = ray.put(request.known_hashes)
        batch_size = request.batch_size or (256 if gpus else 32)
        pending = {}
        for i, shard in shards:
            task = ShardTask(str(request.root), str(folder), shard, model, batch_size,
                             request.workers, request.draft, cpus or None)  # fmt: skip
            pending[remote.remote(task, known)] = i
        return pending

    def gpus(self) -> bool:
        """Whether tasks run on GPUs: the cluster has some and the model may use them."""
        ray = import_ray()
        return ray.cluster_resources().get("GPU", 0) > 0 and self.model_options["device"] != "cpu"

    def _collect(self, ray: Any, ref: Any, folder: Path, shard: Shard) -> ShardResult:
        try:
            summary = ray.get(ref)
        except ray.exceptions.RayError as e:
            first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise ClusterError(
                f"{shard.name} ({len(shard.files)} files from {shard.files[0].path}) failed "
                f"after {self.retries} retries: {first}"
            ) from e
        result = read_shard(folder, shard)
        if result is None:
            raise ClusterError(
                f"{shard.name} finished but its results in {folder} are missing or damaged; "
                "run the command again to encode it again"
            )
        self.on_shard(summary)
        return result


def slots(ray: Any, gpus: bool) -> int:
    """How many tasks the cluster runs at once."""
    resources = ray.cluster_resources()
    if gpus:
        return int(resources.get("GPU", 1))
    return max(1, int(resources.get("CPU", 1) // CPUS_PER_TASK))


def check_workers(request: EncodeRequest, folder: Path) -> None:
    """Refuse, in one line, when a node of the cluster cannot see ROOT or the collection."""
    ray = import_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = secrets.token_hex(16)
    write_bytes_atomic(folder / "probe", token.encode())
    sample = (request.files[0].path, request.files[0].size) if request.files else None
    checks = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        on_node = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        task = ray.remote(probe).options(num_cpus=0, scheduling_strategy=on_node, max_retries=1)
        checks.append(task.remote(str(request.root), str(folder), token, sample))
    for problem in ray.get(checks):
        if problem is not None:
            raise ClusterError(problem)
