"""What a worker does with a shard: read, decode and encode its files, and keep the result.

Runs inside a Ray worker process but imports nothing of Ray, so it can be called directly.
The encoder is loaded once per worker process and kept for the shards that follow.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from index.manifest import ModelIdentity

from ..encoders import load_encoder
from ..encoders.protocol import Encoder
from ..pipeline import Decoded, decode_files
from .shards import Shard, write_shard

_ENCODERS: dict[tuple, Encoder] = {}


@dataclass(frozen=True)
class ModelSpec:
    """How a worker loads the collection's model."""

    identity: ModelIdentity
    weights_hash: str | None
    device: str = "auto"
    precision: str = "auto"
    backend: str = "auto"


@dataclass(frozen=True)
class ShardTask:
    """One shard to encode: its files (relative to root) and where its results go.

    threads: the CPU slots the task holds. The worker's model and its decoding use that many
    threads, not one per core of the machine: N workers on one machine each using every core
    would run N times more threads than cores. None (a task run outside Ray): every core."""

    root: str
    shards_dir: str
    shard: Shard
    model: ModelSpec
    batch_size: int
    workers: int | None
    draft: bool
    threads: int | None = None


@dataclass(frozen=True)
class ShardSummary:
    """What a task did, for the driver's progress and the benchmarks' timeline.

    started/ended: wall clock (time.time()) on the worker. warm: the worker process had the
    model loaded already. load_s: loading it and running its first batch (0 when warm).
    decode_wait_s: time the model waited for decoded images. encode_s: time in the model.
    write_s: writing the shard.
    cpu_s: CPU time of the worker process during the task (all its threads); cpu_before_s:
    CPU time it had used before (its start and imports, and earlier tasks)."""

    name: str
    files: int
    encoded: int
    seconds: float
    host: str
    pid: int = 0
    started: float = 0.0
    ended: float = 0.0
    warm: bool = False
    load_s: float = 0.0
    decode_wait_s: float = 0.0
    encode_s: float = 0.0
    write_s: float = 0.0
    cpu_s: float = 0.0
    cpu_before_s: float = 0.0


def cached_encoder(spec: ModelSpec, threads: int | None = None) -> tuple[Encoder, bool]:
    """The model of spec, loaded once in this process, its threads limited to `threads` (all
    cores when None); and whether it was loaded already."""
    key = (spec.identity, spec.weights_hash, spec.device, spec.precision, spec.backend, threads)
    if key in _ENCODERS:
        return _ENCODERS[key], True
    options = {"device": spec.device, "precision": spec.precision, "backend": spec.backend}
    encoder = load_encoder(spec.identity, weights_hash=spec.weights_hash, towers=("image",),
                           **options)  # fmt: skip
    if threads:
        limit_threads(encoder, threads)
    _ENCODERS[key] = encoder
    return encoder, False


def limit_threads(encoder: Encoder, threads: int) -> None:
    """Run the model on `threads` threads: ONNX Runtime's intra-op pool, or PyTorch's."""
    if encoder.backend == "onnx" and hasattr(encoder, "threads"):
        encoder.threads = threads  # read when its sessions are made, at the first batch
    elif encoder.backend == "torch":
        import torch

        torch.set_num_threads(threads)


def encode_shard(task: ShardTask, known_hashes: frozenset[str]) -> ShardSummary:
    """Encode the shard's files and write its results (retrieval.cluster.shards); a file that
    cannot be read is a result with its reason, not a failure of the shard."""
    cpu_before, started, clock = time.process_time(), time.time(), time.perf_counter()
    encoder, warm = cached_encoder(task.model, task.threads)
    loaded = time.perf_counter()
    decoded = decode_files(
        Path(task.root),
        task.shard.files,
        prepare=encoder.prepare,
        min_side=encoder.min_side if task.draft else None,
        known_hashes=known_hashes,
        workers=task.workers or task.threads,
        window=2 * task.batch_size + (task.workers or task.threads or 0) + 2,
    )
    timing = {"decode_wait_s": 0.0, "encode_s": 0.0}
    results, out = _encode_all(encoder, decoded, task.batch_size, timing)
    first = timing.pop("first_s", 0.0)
    if warm:
        timing["encode_s"] += first
    else:  # the first batch waited for the model's session to load: count it as loading
        timing["load_s"] = loaded - clock + first
    written = time.perf_counter()
    write_shard(Path(task.shards_dir), task.shard, results, out)
    ended = time.perf_counter()
    return ShardSummary(task.shard.name, len(results), len(out), ended - clock,
                        os.uname().nodename, os.getpid(), started, time.time(), warm,
                        write_s=ended - written, cpu_s=time.process_time() - cpu_before,
                        cpu_before_s=cpu_before, **timing)  # fmt: skip


def _encode_all(encoder: Encoder, decoded: Iterator[Decoded], batch_size: int,
                timing: dict[str, float]) -> tuple[list[Decoded], np.ndarray]:  # fmt: skip
    """Every result in order (pixels dropped) and the vectors of those with pixels; timing
    gains the seconds waited for decoding and spent in the model (the first call's apart)."""
    results: list[Decoded] = []
    batch: list[np.ndarray] = []
    vectors: list[np.ndarray] = []

    def encode() -> None:
        key = "encode_s" if vectors else "first_s"
        began = time.perf_counter()
        vectors.append(encoder.encode_images(np.stack(batch)))
        batch.clear()
        timing[key] = timing.get(key, 0.0) + time.perf_counter() - began

    waited = time.perf_counter()
    for result in decoded:
        timing["decode_wait_s"] += time.perf_counter() - waited
        if result.pixels is not None:
            batch.append(result.pixels)
            result = replace(result, pixels=None)
        results.append(result)
        if len(batch) >= batch_size:
            encode()
        waited = time.perf_counter()
    if batch:
        encode()
    out = np.concatenate(vectors) if vectors else np.zeros((0, encoder.dim), np.float32)
    return results, out


def probe(root: str, shards_dir: str, token: str, sample: tuple[str, int] | None) -> str | None:
    """Why this worker cannot work on the collection (None if it can): it must see ROOT, a file
    of it at the size the driver saw, and the driver's token in the shards folder."""
    host = os.uname().nodename
    if not os.path.isdir(root):
        return f"worker {host} cannot see {root}; put it on storage every worker mounts"
    if sample is not None:
        path, size = sample
        try:
            seen = os.stat(os.path.join(root, path)).st_size
        except OSError as e:
            return f"worker {host} cannot read {path} under {root} ({e.strerror})"
        if seen != size:
            return f"worker {host} sees another {root} ({path} is {seen} bytes, not {size})"
    try:
        found = Path(shards_dir, "probe").read_text()
    except OSError:
        found = None
    if found != token:
        return f"worker {host} cannot see the collection's {shards_dir}; put it on shared storage"
    if not os.access(shards_dir, os.W_OK):
        return f"worker {host} cannot write {shards_dir}"
    return None
