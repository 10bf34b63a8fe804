"""The files of a collection directory, and where each kind of item keeps its vectors."""

from __future__ import annotations

from dataclasses import dataclass

from .catalog import IMAGE, TEXT

COLLECTION_DIRNAME = ".retrieval"
MANIFEST = "manifest.json"
CATALOG = "catalog.sqlite"
EMBEDDINGS = "embeddings.bin"
FAISS_INDEX = "index.faiss"
TEXT_EMBEDDINGS = "text_embeddings.bin"
TEXT_FAISS_INDEX = "texts.faiss"
LOCK = "lock"
THUMBNAILS = "thumbnails"


@dataclass(frozen=True)
class Space:
    """Where one kind of item (images or texts) keeps its vectors: the embeddings file, the
    FAISS index file, and the manifest field naming the catalog version that index reflects."""

    embeddings: str
    faiss_index: str
    manifest_version: str
    file_key: str
    """The catalog meta key naming the embeddings file in use (compaction writes a new one)."""


SPACES = {
    IMAGE: Space(EMBEDDINGS, FAISS_INDEX, "index_version", "embeddings_file"),
    TEXT: Space(TEXT_EMBEDDINGS, TEXT_FAISS_INDEX, "text_index_version", "text_embeddings_file"),
}
