"""Rebuilding a collection's index on a Ray cluster: trained once, filled in parallel, merged.

`reindex_on_cluster` runs the ordinary reindex (the factory chosen as in one process, the same
tuning, manifest and lock) with a `ParallelBuild` as its builder. The driver trains the empty
index on the sample one process trains on, keeps it in the collection's `reindex/` folder,
and sends ranges of the stored embeddings' rows to Ray tasks. Each task reads its rows from
the embeddings file (memory-mapped, read-only, on storage every worker sees), adds them to a
copy of the trained index and keeps the part in `reindex/`: the index under a temporary name,
renamed, then a `.json` mark naming its count, checksum and trained index. The driver merges
the parts in row order, which leaves the lists exactly as adding every row in one process.

A driver run again reuses the trained index and the parts marked done for it: a part's name
is a hash of the trained index's bytes and of its rows and ids, so nothing of another plan is
ever merged. Flat and HNSW indexes are not split by lists; they are built on the driver.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index import ann, parts
from index.atomic import write_bytes_atomic
from index.collection import Collection, resolve_dir
from index.tuning import Tuning
from index.vectors import EmbeddingStore, StoredVectors

from ..upkeep import reindex
from .address import connected, import_ray, parse_cluster
from .errors import ClusterError

REINDEX_DIRNAME = "reindex"
DEFAULT_REINDEX_SHARD_SIZE = 100_000
"""Vectors per task: 100,000 of 512-d float16 are 100 MB to read, a few seconds to add."""


@dataclass(frozen=True)
class ReindexProgress:
    """phase: 'train' (the driver trains the empty index), 'shard' (done of total parts
    filled), 'merge' (done of total merged) or 'note' (message says why the index is built on
    the driver)."""

    phase: str
    done: int = 0
    total: int = 0
    message: str | None = None


@dataclass(frozen=True)
class PartTask:
    """One range of the stored vectors to add to a copy of the trained index."""

    store: str
    dim: int
    dtype: str
    rows: np.ndarray
    ids: np.ndarray
    trained: str
    trained_sha256: str
    folder: str
    name: str
    threads: int = 1


@dataclass(frozen=True)
class PartSummary:
    name: str
    vectors: int
    seconds: float
    host: str


def reindex_on_cluster(
    collection_dir: Path | None = None,
    *,
    cluster: str = "none",
    factory: str | None = None,
    memory_budget: int | None = None,
    target_recall: float | None = None,
    shard_size: int = DEFAULT_REINDEX_SHARD_SIZE,
    retries: int = 3,
    progress: Callable[[ReindexProgress], None] | None = None,
    add: Callable[[PartTask], PartSummary] | None = None,
) -> Tuning:
    """retrieval.upkeep.reindex, with the index's lists filled by tasks on the Ray cluster at
    `cluster` (local, local:N, auto, ray://HOST:PORT; none: in this process, as reindex does).

    shard_size: stored vectors per task. retries: how often Ray runs a task again whose worker
    died. add: the function a task runs (add_part).
    """
    address = parse_cluster(cluster)
    if address.kind == "none":
        return reindex(collection_dir, factory=factory, memory_budget=memory_budget,
                       target_recall=target_recall)  # fmt: skip
    if shard_size < 1:
        raise ClusterError(f"--shard-size must be at least 1, not {shard_size}")
    if target_recall is not None and not 0 < target_recall <= 1:
        raise ClusterError(f"--target-recall must be in (0, 1], not {target_recall}")
    report = progress or (lambda event: None)
    with Collection.open(resolve_dir(collection_dir)) as collection, collection.locked():
        folder = collection.dir / REINDEX_DIRNAME
        build = ParallelBuild(folder, shard_size=shard_size, retries=retries,
                              add=add or add_part, progress=report)  # fmt: skip
        with connected(address):
            tuning = collection.reindex(factory, memory_budget=memory_budget,
                                        target_recall=target_recall, build=build)  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)  # installed: the parts are spent
        return tuning


class ParallelBuild:
    """A builder for Collection.reindex (index.indexes.Builder): the index of the factory over
    the stored vectors, trained here and filled by Ray tasks."""

    def __init__(self, folder: Path, *, shard_size: int, retries: int,
                 add: Callable[[PartTask], PartSummary],
                 progress: Callable[[ReindexProgress], None]) -> None:  # fmt: skip
        self.folder = folder
        self.shard_size = shard_size
        self.retries = retries
        self.add = add
        self.progress = progress
        self.reused = 0
        """Parts found done by an earlier run, not filled again."""

    def __call__(self, factory: str, vectors: StoredVectors, ids: np.ndarray, *, dim: int) -> Any:
        self.folder.mkdir(exist_ok=True)
        plan = _digest(factory, dim, ids, vectors.rows, _identity(vectors.store))
        trained_path = self.folder / f"trained-{plan}.index"
        self.progress(ReindexProgress("train"))
        trained = self._trained(trained_path, factory, vectors, ids, dim)
        index = parts.from_bytes(trained)
        if not parts.splits_by_lists(index):
            self.progress(ReindexProgress("note", message=f"{factory} is not split by inverted "
                                          "lists; building it here, in one process"))  # fmt: skip
            _remove_all_but(self.folder, set())
            ann.add_rows(index, vectors, ids, 0, len(ids))
            return index
        trained_sha = hashlib.sha256(trained).hexdigest()
        tasks = [self._task(vectors, ids, trained_path, trained_sha, start)
                 for start in range(0, len(ids), self.shard_size)]  # fmt: skip
        keep = {f"{task.name}{suffix}" for task in tasks for suffix in (".index", ".json")}
        _remove_all_but(self.folder, keep | {trained_path.name})
        self._fill(tasks)
        self.progress(ReindexProgress("merge", 0, len(tasks)))
        return parts.merged(trained, self._parts(tasks))

    def _trained(self, path: Path, factory: str, vectors: StoredVectors, ids: np.ndarray,
                 dim: int) -> bytes:  # fmt: skip
        """The trained empty index a stopped run kept for this plan, or one trained now."""
        with contextlib.suppress(OSError, ValueError):
            data = path.read_bytes()
            parts.from_bytes(data)
            return data
        data = parts.to_bytes(ann.trained(factory, vectors, ids, dim=dim))
        write_bytes_atomic(path, data)
        return data

    def _task(self, vectors: StoredVectors, ids: np.ndarray, trained: Path, trained_sha: str,
              start: int) -> PartTask:  # fmt: skip
        """The task of the rows from start, shard_size of them or as many as are left."""
        stop = min(start + self.shard_size, len(ids))
        store = vectors.store
        rows, part_ids = vectors.rows[start:stop], ids[start:stop]
        name = f"part-{start:012d}-{_digest(trained_sha, part_ids, rows)}"
        return PartTask(str(store.path), store.dim, store.dtype.name, rows, part_ids,
                        str(trained), trained_sha, str(self.folder), name)  # fmt: skip

    def _fill(self, tasks: Sequence[PartTask]) -> None:
        """Run the tasks whose parts are not done yet, and wait for them all."""
        ray = import_ray()
        todo = [t for t in tasks if read_part(t) is None]
        self.reused = len(tasks) - len(todo)
        done = self.reused
        self.progress(ReindexProgress("shard", done, len(tasks)))
        remote = ray.remote(self.add).options(max_retries=self.retries, num_cpus=1)
        pending = {remote.remote(task): task for task in todo}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            task = pending.pop(ready[0])
            try:
                ray.get(ready[0])
            except ray.exceptions.RayError as e:
                text = str(e).strip()
                first = text.splitlines()[-1] if text else type(e).__name__
                raise ClusterError(
                    f"{task.name} ({len(task.rows):,} vectors) failed after {self.retries} "
                    f"retries: {first}"
                ) from e
            done += 1
            self.progress(ReindexProgress("shard", done, len(tasks)))

    def _parts(self, tasks: Sequence[PartTask]) -> Iterator[bytes]:
        for number, task in enumerate(tasks, 1):
            data = read_part(task)
            if data is None:
                raise ClusterError(
                    f"{task.name} finished but its index in {task.folder} is missing or "
                    "damaged; run the command again to fill it again"
                )
            yield data
            self.progress(ReindexProgress("merge", number, len(tasks)))


def add_part(task: PartTask) -> PartSummary:
    """Add the task's rows of the stored vectors to a copy of the trained index and keep it:
    the index first (`NAME.index`), then its done mark (`NAME.json`). Runs in a Ray worker
    but imports nothing of Ray, so it can be called directly."""
    started = time.perf_counter()
    trained = Path(task.trained).read_bytes()
    if hashlib.sha256(trained).hexdigest() != task.trained_sha256:
        raise ClusterError(f"{task.trained} changed while {task.name} was being filled")
    store = EmbeddingStore(Path(task.store), task.dim, task.dtype)
    data = parts.fill(trained, store, task.rows, task.ids, threads=task.threads)
    folder = Path(task.folder)
    write_bytes_atomic(folder / f"{task.name}.index", data)
    mark = {"part": task.name, "vectors": len(task.ids), "trained": task.trained_sha256,
            "sha256": hashlib.sha256(data).hexdigest()}  # fmt: skip
    write_bytes_atomic(folder / f"{task.name}.json", json.dumps(mark).encode())
    seconds = time.perf_counter() - started
    return PartSummary(task.name, len(task.ids), seconds, os.uname().nodename)


def read_part(task: PartTask) -> bytes | None:
    """The part's index if it is marked done, for this trained index, and intact; else None."""
    folder = Path(task.folder)
    try:
        mark = json.loads((folder / f"{task.name}.json").read_bytes())
        data = (folder / f"{task.name}.index").read_bytes()
    except (OSError, ValueError):
        return None
    intact = hashlib.sha256(data).hexdigest() == mark.get("sha256")
    ours = mark.get("trained") == task.trained_sha256 and mark.get("vectors") == len(task.ids)
    return data if intact and ours else None


def _digest(*values: object) -> str:
    """A short hash of strings, numbers and arrays, in order."""
    digest = hashlib.sha256()
    for value in values:
        data = value.tobytes() if isinstance(value, np.ndarray) else repr(value).encode()
        digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()[:24]


def _identity(store: EmbeddingStore) -> tuple:
    """What tells one embeddings file from another, or from itself after a write."""
    info = store.path.stat()
    return (store.path.name, store.dtype.name, info.st_ino, info.st_size, info.st_mtime_ns)


def _remove_all_but(folder: Path, keep: set[str]) -> None:
    """Remove what an earlier run of another plan left, and temporary files of killed writers."""
    for path in folder.iterdir():
        if path.name not in keep and path.is_file():
            path.unlink(missing_ok=True)
