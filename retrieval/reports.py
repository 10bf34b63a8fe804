"""What an index run reports, kept apart from the indexer so that readers of a collection
(`retrieval info`) need not load the ingest chain."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class SkippedFile:
    """A file that is not searchable, and why. new: it failed in this run for the first time."""

    path: str
    error: str
    new: bool = True


@dataclass(frozen=True)
class IndexProgress:
    """Reported while indexing. phase: 'scan' (done files found), 'encode' (done of total
    files read), or 'skip' (one more skipped file, in `skipped`)."""

    phase: str
    done: int
    total: int
    skipped: SkippedFile | None = None


ProgressCallback = Callable[[IndexProgress], None]


@dataclass
class IndexReport:
    """What an index run did. Counts are of files; `encoded` counts model forward passes;
    `dated` counts images whose capture time was read from their header alone (a collection
    made before capture times were stored, or copies of photos already embedded)."""

    root: Path
    collection: Path
    added: int = 0
    updated: int = 0
    renamed: int = 0
    removed: int = 0
    unchanged: int = 0
    encoded: int = 0
    compacted: int = 0
    """Dead embedding rows dropped by the compaction at the end of the run (0: none ran)."""
    skipped: list[SkippedFile] = field(default_factory=list)
    seconds: float = 0.0
    encode_seconds: float = 0.0
    dated: int = 0

    @property
    def images_per_second(self) -> float:
        return self.encoded / self.encode_seconds if self.encode_seconds > 0 else 0.0
