"""What a collection holds, for `retrieval info`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from index.capture import CaptureSpan
from index.collection import Collection, resolve_dir
from index.layout import FAISS_INDEX
from index.manifest import ModelIdentity

from .dates import local_time
from .names import printable
from .reports import SkippedFile


@dataclass(frozen=True)
class CollectionInfo:
    directory: Path
    root: Path
    model: ModelIdentity
    dim: int
    factory: str
    embedding_dtype: str
    images: int
    texts: int
    bytes_on_disk: int
    index_bytes: int = 0
    auto_index: bool = True
    search_params: dict[str, int] = field(default_factory=dict)
    tuning: dict[str, Any] = field(default_factory=dict)
    """recall (recall@k against exact search), k, queries, ms_per_query; empty until tuned."""
    index_updates: str = "in place"
    backend: str = "torch"
    precision: str = "fp32"
    skipped: list[SkippedFile] = field(default_factory=list)
    taken: CaptureSpan | None = None
    """When the images were taken: the span and how many times came from each source."""

    def to_dict(self) -> dict[str, Any]:
        """The plain-JSON form that `info --json` prints and the web app's /api/info returns.
        Paths are in their printable form (a name that is not UTF-8 escaped)."""
        return {
            "collection": printable(str(self.directory)),
            "root": printable(str(self.root)),
            "model": self.model.name,
            "pretrained": self.model.pretrained,
            "dim": self.dim,
            "factory": self.factory,
            "auto_index": self.auto_index,
            "search_params": self.search_params,
            "tuning": self.tuning,
            "index_bytes": self.index_bytes,
            "index_updates": self.index_updates,
            "embedding_dtype": self.embedding_dtype,
            "backend": self.backend,
            "precision": self.precision,
            "images": self.images,
            "texts": self.texts,
            "skipped": [{"path": printable(s.path), "error": s.error} for s in self.skipped],
            "bytes_on_disk": self.bytes_on_disk,
            "taken": _span_dict(self.taken),
        }


def collection_info(collection_dir: Path | None = None) -> CollectionInfo:
    """Describe the collection in collection_dir, or the nearest one above the current folder."""
    with Collection.open(resolve_dir(collection_dir), readonly=True) as collection:
        stats = collection.stats()
        manifest = collection.manifest
        skipped = [
            SkippedFile(item.path, item.error or "", new=False)
            for item in collection.catalog.errors()
        ]
        return CollectionInfo(
            directory=collection.dir,
            root=collection.root,
            model=manifest.model,
            dim=manifest.dim,
            factory=manifest.factory,
            embedding_dtype=manifest.embedding_dtype,
            images=stats.images,
            texts=stats.texts,
            bytes_on_disk=stats.bytes_on_disk,
            index_bytes=_size(collection.dir / FAISS_INDEX),
            auto_index=manifest.auto_index,
            search_params=dict(manifest.search_params),
            tuning=dict(manifest.tuning),
            index_updates=manifest.index_updates,
            backend=manifest.backend,
            precision=manifest.precision,
            skipped=skipped,
            taken=collection.catalog.capture_span(),
        )


def _span_dict(span: CaptureSpan | None) -> dict[str, Any]:
    """earliest and latest (ISO 8601 at the photo's own offset, or None), the count of images
    dated by each source (exif, exif-local, mtime), and those not read yet (unread)."""
    if span is None:
        return {}
    ends = {
        name: None if end is None else local_time(end).isoformat()
        for name, end in (("earliest", span.earliest), ("latest", span.latest))
    }
    return {**ends, **span.by_source, "unread": span.unread}


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
