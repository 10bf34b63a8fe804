"""What a collection holds, for `retrieval info`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from index.collection import Collection, find_collection
from index.manifest import ModelIdentity

from .indexer import SkippedFile


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
    skipped: list[SkippedFile] = field(default_factory=list)


def collection_info(collection_dir: Path | None = None) -> CollectionInfo:
    """Describe the collection in collection_dir, or the nearest one above the current folder."""
    directory = Path(collection_dir).expanduser() if collection_dir else find_collection()
    with Collection.open(directory, readonly=True) as collection:
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
            skipped=skipped,
        )
