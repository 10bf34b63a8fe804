"""What a worker does with a shard: read, decode and encode its files, and keep the result.

Runs inside a Ray worker process but imports nothing of Ray, so it can be called directly.
The encoder is loaded once per worker process and kept for the shards that follow.
"""

from __future__ import annotations

import os
import time
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
    """One shard to encode: its files (relative to root) and where its results go."""

    root: str
    shards_dir: str
    shard: Shard
    model: ModelSpec
    batch_size: int
    workers: int | None
    draft: bool


@dataclass(frozen=True)
class ShardSummary:
    name: str
    files: int
    encoded: int
    seconds: float
    host: str


def cached_encoder(spec: ModelSpec) -> Encoder:
    """The model of spec, loaded once in this process."""
    key = (spec.identity, spec.weights_hash, spec.device, spec.precision, spec.backend)
    if key not in _ENCODERS:
        options = {"device": spec.device, "precision": spec.precision, "backend": spec.backend}
        _ENCODERS[key] = load_encoder(spec.identity, weights_hash=spec.weights_hash, **options)
    return _ENCODERS[key]


def encode_shard(task: ShardTask, known_hashes: frozenset[str]) -> ShardSummary:
    """Encode the shard's files and write its results (retrieval.cluster.shards); a file that
    cannot be read is a result with its reason, not a failure of the shard."""
    started = time.perf_counter()
    encoder = cached_encoder(task.model)
    decoded = decode_files(
        Path(task.root),
        task.shard.files,
        prepare=encoder.prepare,
        min_side=encoder.min_side if task.draft else None,
        known_hashes=known_hashes,
        workers=task.workers,
        window=2 * task.batch_size + (task.workers or 0) + 2,
    )
    results: list[Decoded] = []
    batch: list[np.ndarray] = []
    vectors: list[np.ndarray] = []
    for result in decoded:
        if result.pixels is not None:
            batch.append(result.pixels)
            result = replace(result, pixels=None)
        results.append(result)
        if len(batch) >= task.batch_size:
            vectors.append(encoder.encode_images(np.stack(batch)))
            batch = []
    if batch:
        vectors.append(encoder.encode_images(np.stack(batch)))
    out = np.concatenate(vectors) if vectors else np.zeros((0, encoder.dim), np.float32)
    write_shard(Path(task.shards_dir), task.shard, results, out)
    seconds = time.perf_counter() - started
    return ShardSummary(task.shard.name, len(results), len(out), seconds, os.uname().nodename)


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
