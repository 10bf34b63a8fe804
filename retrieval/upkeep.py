"""Looking after a collection without encoding anything: rebuild its index (`reindex`), verify
and mend it (`check`), and reclaim the space of embeddings no item uses (`compact`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from index import integrity
from index.collection import Collection, resolve_dir
from index.compaction import Compaction
from index.integrity import Problem
from index.tuning import Tuning

from .errors import RetrievalError


def reindex(
    collection_dir: Path | None = None,
    *,
    factory: str | None = None,
    memory_budget: int | None = None,
    target_recall: float | None = None,
) -> Tuning:
    """Rebuild a collection's image index from its stored embeddings; no image is encoded.

    factory: a FAISS factory string ("IVF1024,Flat", "HNSW32", ...), or None to choose one from
    the collection's size and memory_budget (bytes) and to keep choosing as it grows.
    """
    if target_recall is not None and not 0 < target_recall <= 1:
        raise RetrievalError(f"--target-recall must be in (0, 1], not {target_recall}")
    with Collection.open(resolve_dir(collection_dir)) as collection, collection.locked():
        return collection.reindex(factory, memory_budget=memory_budget, target_recall=target_recall)


@dataclass(frozen=True)
class CheckReport:
    """What `check` found (one Problem per thing wrong) and, with repair, what it mended."""

    collection: Path
    problems: list[Problem]
    repaired: list[str]

    @property
    def ok(self) -> bool:
        """Nothing was wrong, or everything wrong was mended."""
        return all(p.repairable for p in self.problems) if self.repaired else not self.problems


def check_collection(collection_dir: Path | None = None, *, repair: bool = False) -> CheckReport:
    """Verify a collection (see index.integrity); repair: mend what can be mended without
    losing anything. Damaged embeddings are marked, and the next `index` run encodes them."""
    directory = resolve_dir(collection_dir)
    with Collection.open(directory, readonly=not repair, verify=False) as collection:
        problems = integrity.verify(collection).problems
        repaired: list[str] = []
        if repair and any(p.repairable for p in problems):
            with collection.locked():
                repaired = integrity.repair(collection, integrity.verify(collection))
        return CheckReport(collection.dir, problems, repaired)


def compact_collection(collection_dir: Path | None = None) -> Compaction:
    """Rewrite a collection's embeddings without the rows no item uses any more, and drop the
    thumbnails no item has."""
    with Collection.open(resolve_dir(collection_dir)) as collection, collection.locked():
        done = collection.compact()
        integrity.drop_orphan_thumbnails(collection)
        return done
