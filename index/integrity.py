"""Verifying a collection the way `git fsck` and SQLite's integrity check do, and mending what
can be mended without losing anything.

What is checked: the catalog file (PRAGMA integrity_check); the manifest against the catalog's
record (model, dim, dtype); every embedding row in use (present, finite, not zero, of unit
length); items pointing at no row; the FAISS indexes (readable, and holding exactly the ids
the catalog has); thumbnails no item has; embeddings files an interrupted compaction left.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import compaction, provenance
from .catalog import IMAGE, STATUS_STALE, TEXT
from .errors import CorruptCollection
from .layout import MANIFEST, SPACES, THUMBNAILS
from .manifest import Manifest

if TYPE_CHECKING:
    from .collection import Collection

NORM_TOLERANCE = 0.02
"""How far a stored row's length may be from 1 (float16 rounding moves it by about 1e-3)."""
CHUNK = 65_536


@dataclass(frozen=True)
class Problem:
    """One thing found wrong. repairable: `check --repair` mends it without losing anything."""

    part: str
    message: str
    repairable: bool = True


@dataclass
class Findings:
    """What verify() found, and what repair() needs to mend it."""

    problems: list[Problem] = field(default_factory=list)
    manifest: bool = False
    damaged: dict[str, list[int]] = field(default_factory=lambda: {IMAGE: [], TEXT: []})
    """Ids of images (texts) whose embedding is damaged or missing."""
    faiss: list[str] = field(default_factory=list)
    """Kinds whose FAISS index must be rebuilt."""
    thumbnails: list[Path] = field(default_factory=list)
    leftovers: list[Path] = field(default_factory=list)

    def add(self, part: str, message: str, repairable: bool = True) -> None:
        self.problems.append(Problem(part, message, repairable))


def verify(collection: Collection) -> Findings:
    """Everything found wrong with an open collection (opened with verify=False)."""
    findings = Findings()
    for line in collection.catalog.integrity():
        findings.add("catalog", f"{collection.catalog.path}: {line}", repairable=False)
    _verify_manifest(collection, findings)
    for kind in SPACES:
        _verify_embeddings(collection, kind, findings)
        _verify_faiss(collection, kind, findings)
    _verify_thumbnails(collection, findings)
    findings.leftovers = compaction.leftovers(collection)
    for path in findings.leftovers:
        findings.add("embeddings", f"{path} is left over from an interrupted compaction")
    stale = collection.catalog.count(STATUS_STALE)
    if stale:
        findings.add(
            "catalog", f"{stale} images await encoding again; run `retrieval index`", False
        )
    return findings


def _verify_manifest(collection: Collection, findings: Findings) -> None:
    path = collection.dir / MANIFEST
    record = provenance.recorded(collection.catalog)
    try:
        on_disk = Manifest.read(path)
    except FileNotFoundError:
        findings.add("manifest", f"{path} is missing", repairable=record is not None)
    except CorruptCollection as e:
        findings.add("manifest", str(e).split(";")[0], repairable=record is not None)
    else:
        problem = None if record is None else provenance.disagreement(on_disk, record)
        if problem is not None:
            findings.add("manifest", f"{path} {problem}")
        findings.manifest = problem is not None
        return
    findings.manifest = record is not None


def _verify_embeddings(collection: Collection, kind: str, findings: Findings) -> None:
    """Rows in use that are missing, not finite, zero or not of unit length; items with none."""
    item_ids, item_rows = collection.catalog.vector_rows(kind)
    ids = np.asarray(item_ids, dtype=np.int64)
    rows = np.asarray([-1 if r is None else r for r in item_rows], dtype=np.int64)
    store = collection.store_for(kind)
    next_row = collection.catalog.next_row(kind)
    bad = np.zeros(len(ids), dtype=bool)
    reasons: dict[str, int] = {}

    def note(mask: np.ndarray, reason: str) -> None:
        fresh = mask & ~bad
        if fresh.any():
            reasons[reason] = int(fresh.sum())
            bad[fresh] = True

    note(rows < 0, "point at no row")
    note(rows >= next_row, f"point past the catalog's next free row {next_row}")
    available = store.rows()
    note(rows >= available, f"lie past the end of the file (it holds {available} rows)")
    if available:
        mapped = np.memmap(store.path, dtype=store.dtype, mode="r", shape=(available, store.dim))
        for start in range(0, len(ids), CHUNK):
            part = slice(start, start + CHUNK)
            inside = np.flatnonzero(~bad[part]) + start
            vectors = np.asarray(mapped[rows[inside]], dtype=np.float32)
            finite = np.isfinite(vectors).all(axis=1)
            norms = np.linalg.norm(np.where(np.isfinite(vectors), vectors, 0), axis=1)
            for mask, reason in (
                (~finite, "are not finite"),
                (finite & (norms < 1e-6), "are all zero"),
                (finite & (np.abs(norms - 1) > NORM_TOLERANCE), "are not of unit length"),
            ):
                flagged = np.zeros(len(ids), dtype=bool)
                flagged[inside[mask]] = True
                note(flagged, reason)
    what = "images" if kind == IMAGE else "texts"
    for reason, count in reasons.items():
        findings.add("embeddings", f"{store.path}: the embeddings of {count} {what} {reason}")
    findings.damaged[kind] = ids[bad].tolist()


def _verify_faiss(collection: Collection, kind: str, findings: Findings) -> None:
    from . import vector_index

    path = collection.dir / SPACES[kind].faiss_index
    if not path.is_file():
        return
    try:
        index = vector_index.load(path)
    except CorruptCollection:
        findings.add("faiss", f"{path} is not a readable FAISS index")
        findings.faiss.append(kind)
        return
    saved = getattr(collection.manifest, SPACES[kind].manifest_version)
    if saved != collection.catalog.version_of(kind):
        return  # stale, not wrong: the next search or index run brings it up to date
    ids, _ = collection.catalog.vector_rows(kind)
    # Damaged rows may be indexed or not (a non-finite one never is): they are repaired anyway.
    expected = np.setdiff1d(np.asarray(ids, dtype=np.int64), findings.damaged[kind])
    held = np.setdiff1d(vector_index.index_ids(index), findings.damaged[kind])
    if not np.array_equal(held, expected):
        missing = len(np.setdiff1d(expected, held))
        extra = len(np.setdiff1d(held, expected))
        findings.add("faiss", f"{path} lacks {missing} ids of the catalog and holds {extra} others")
        findings.faiss.append(kind)


def orphan_thumbnails(collection: Collection) -> list[Path]:
    """Cached thumbnails (named by content hash, or size-mtime) that no catalog item has."""
    folder = collection.dir / THUMBNAILS
    if not folder.is_dir():
        return []
    known = {item.hash or f"{item.size}-{item.mtime_ns}" for item in collection.catalog.items()}
    return [
        path
        for path in sorted(folder.glob("*/*"))
        if path.is_file() and path.stem.rsplit("-", 1)[0] not in known
    ]


def drop_orphan_thumbnails(collection: Collection) -> int:
    """Delete the cached thumbnails no catalog item has; returns how many."""
    orphans = orphan_thumbnails(collection)
    for path in orphans:
        path.unlink(missing_ok=True)
    return len(orphans)


def _verify_thumbnails(collection: Collection, findings: Findings) -> None:
    folder = collection.dir / THUMBNAILS
    findings.thumbnails = orphan_thumbnails(collection)
    if findings.thumbnails:
        findings.add(
            "thumbnails", f"{len(findings.thumbnails)} thumbnails in {folder} show no item"
        )


def repair(collection: Collection, findings: Findings) -> list[str]:
    """Mend what verify() found that can be mended (the lock held); returns what was done."""
    done = []
    if findings.manifest:
        collection.save_manifest()
        done.append(f"rewrote {collection.dir / MANIFEST} from the catalog")
    if findings.damaged[IMAGE]:
        with collection.catalog.transaction():
            collection.catalog.mark_stale(findings.damaged[IMAGE])
        done.append(
            f"marked {len(findings.damaged[IMAGE])} images to be encoded again by the next "
            "`retrieval index`"
        )
    if findings.damaged[TEXT]:
        with collection.catalog.transaction():
            collection.catalog.delete_texts(findings.damaged[TEXT])
        done.append(f"removed {len(findings.damaged[TEXT])} damaged texts; add them again")
    for kind in dict.fromkeys(findings.faiss):
        (collection.dir / SPACES[kind].faiss_index).unlink(missing_ok=True)
        setattr(collection.manifest, SPACES[kind].manifest_version, -1)
        collection.sync_index(kind)
        done.append(f"rebuilt {collection.dir / SPACES[kind].faiss_index}")
    for path in findings.thumbnails + findings.leftovers:
        path.unlink(missing_ok=True)
    if findings.thumbnails:
        done.append(f"removed {len(findings.thumbnails)} orphan thumbnails")
    if findings.leftovers:
        done.append(f"removed {len(findings.leftovers)} left-over embeddings files")
    return done
