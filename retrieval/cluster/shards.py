"""Shards: how the files to encode are split, and how a finished shard is kept on disk.

A shard's results live in the collection's `shards/` folder as two files written atomically,
the vectors first: `NAME.npy` (float32 (encoded, d)) and `NAME.json`, which lists every file
of the shard with what became of it and names the count and SHA-256 of the `.npy`. The `.json`
is the mark that the shard is done; one whose `.npy` does not match it is not done. A shard's
name is a hash of its files (path, size, mtime), so a driver run again plans the same shards
for the same files and finds the ones already done.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from index.atomic import write_bytes_atomic
from index.capture import CaptureTime

from ..pipeline import Decoded
from ..remote_encoding import EncodedBatch
from ..scan import FileInfo

SHARDS_DIRNAME = "shards"
ENCODED, KNOWN, ERROR = "encoded", "known", "error"


@dataclass(frozen=True)
class Shard:
    """A run of files encoded together by one task, in their order in the plan."""

    name: str
    files: list[FileInfo]


@dataclass(frozen=True)
class ShardResult:
    """A done shard read back: every file's result in order, and the vectors of those encoded."""

    shard: Shard
    results: list[Decoded]
    vectors: np.ndarray

    @property
    def encoded(self) -> int:
        return len(self.vectors)

    def batch(self, seconds: float = 0.0, resumed: bool = False) -> EncodedBatch:
        encoded = [r for r in self.results if r.error is None and not r.known]
        others = [r for r in self.results if r.error is not None or r.known]
        vectors = np.asarray(self.vectors, dtype=np.float32) if encoded else None
        return EncodedBatch(encoded, vectors, others, seconds, resumed)


MAX_SHARD_SIZE = 10_000
SHARDS_PER_SLOT = 4
SIZE_FILENAME = "size.json"


def auto_shard_size(files: int, slots: int) -> int:
    """Files per shard when none is given: SHARDS_PER_SLOT shards for each slot (so that every
    slot is busy to the end, and a slow or lost task is a small part of the run), in rounds of
    exactly `slots` shards, none over MAX_SHARD_SIZE."""
    slots = max(1, slots)
    count = slots * max(SHARDS_PER_SLOT, -(-files // (slots * MAX_SHARD_SIZE)))
    return max(1, -(-files // count))


def remembered_size(folder: Path, chosen: int) -> int:
    """The shard size of the run whose shards are in folder, if one was stopped there, else
    `chosen`, now remembered: a run again plans the same shards and finds those done, although
    it has fewer files to encode than the run that chose the size."""
    path = folder / SIZE_FILENAME
    try:
        size = json.loads(path.read_bytes())["shard_size"]
        if isinstance(size, int) and size >= 1:
            return size
    except (OSError, ValueError, KeyError, TypeError):
        pass
    write_bytes_atomic(path, json.dumps({"shard_size": chosen}).encode())
    return chosen


def plan_shards(files: list[FileInfo], shard_size: int) -> list[Shard]:
    """Split files, in order, into shards of at most shard_size."""
    if shard_size < 1:
        raise ValueError(f"shard size must be at least 1, not {shard_size}")
    return [_shard(files[i : i + shard_size]) for i in range(0, len(files), shard_size)]


def _shard(files: list[FileInfo]) -> Shard:
    digest = hashlib.sha256()
    for file in files:
        line = f"{file.path}\0{file.size}\0{file.mtime_ns}\n"
        digest.update(line.encode("utf-8", "surrogatepass"))
    return Shard(f"shard-{digest.hexdigest()[:24]}", files)


def write_shard(folder: Path, shard: Shard, results: list[Decoded], vectors: np.ndarray) -> None:
    """Keep a finished shard: vectors float32 (encoded, d) of the results that were encoded, in
    order. Writing again (a retried task) replaces the files whole."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(vectors, dtype=np.float32))
    data = buffer.getvalue()
    write_bytes_atomic(folder / f"{shard.name}.npy", data)
    record = {
        "shard": shard.name,
        "count": len(results),
        "encoded": len(vectors),
        "sha256": hashlib.sha256(data).hexdigest(),
        "files": [_row(r) for r in results],
    }
    write_bytes_atomic(folder / f"{shard.name}.json", json.dumps(record).encode())


def _row(result: Decoded) -> list:
    kind = ERROR if result.error is not None else KNOWN if result.known else ENCODED
    file = result.file
    capture = result.capture
    taken = None if capture is None else [capture.taken, capture.offset, capture.source,
                                          capture.camera]  # fmt: skip
    return [file.path, file.size, file.mtime_ns, result.hash, result.width, result.height,
            kind, result.error, taken]  # fmt: skip


def read_shard(folder: Path, shard: Shard) -> ShardResult | None:
    """The shard's results if it is done and intact and holds exactly its files, else None."""
    try:
        record = json.loads((folder / f"{shard.name}.json").read_bytes())
        data = (folder / f"{shard.name}.npy").read_bytes()
    except (OSError, ValueError):
        return None
    rows = record.get("files", [])
    if hashlib.sha256(data).hexdigest() != record.get("sha256") or len(rows) != len(shard.files):
        return None
    results = []
    for file, row in zip(shard.files, rows, strict=True):
        path, size, mtime_ns, digest, width, height, kind, error, taken = row
        if (path, size, mtime_ns) != (file.path, file.size, file.mtime_ns):
            return None
        error = error if kind == ERROR else None
        size = {"width": width, "height": height}
        capture = None if taken is None else CaptureTime(*taken)
        results.append(
            Decoded(file, hash=digest, known=kind == KNOWN, error=error, capture=capture, **size)
        )
    vectors = np.load(io.BytesIO(data))
    if len(vectors) != record.get("encoded") or len(vectors) != sum(r[6] == ENCODED for r in rows):
        return None
    return ShardResult(shard, results, vectors)


def remove_shard(folder: Path, name: str) -> None:
    for suffix in (".json", ".npy"):
        (folder / f"{name}{suffix}").unlink(missing_ok=True)


def remove_all_but(folder: Path, keep: set[str]) -> None:
    """Remove shard files, and temporary files left by killed writers, not named in keep."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.name.split(".")[0] not in keep and path.is_file():
            path.unlink(missing_ok=True)
    if not keep and not any(folder.iterdir()):
        with contextlib.suppress(OSError):  # a straggling worker of a killed run wrote again
            folder.rmdir()
