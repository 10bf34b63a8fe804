"""A collection: one directory holding the manifest, catalog, embeddings and FAISS indexes.

`Collection` owns the directory, its write lock, the manifest and the catalog, and speaks in
intents (append images or texts, record the encoder); `indexes.CollectionIndexes` keeps and
searches its FAISS indexes."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from . import compaction, opening, provenance
from .catalog import IMAGE, STATUS_OK, TEXT, Catalog, Item
from .compaction import Compaction
from .errors import CollectionError, CollectionLocked, CollectionNotFound, ModelMismatch
from .indexes import Builder, CollectionIndexes
from .layout import CATALOG, LOCK, MANIFEST, SPACES
from .manifest import Manifest, ModelIdentity
from .opening import default_dir, find_collection, resolve_dir  # noqa: F401 (re-exported)
from .vectors import EmbeddingStore, StoredVectors

if TYPE_CHECKING:
    import faiss

    from .tuning import Tuning

T = TypeVar("T")


@dataclass(frozen=True)
class CollectionStats:
    images: int
    skipped: int
    texts: int
    bytes_on_disk: int


@dataclass(frozen=True)
class NewImage:
    """An image file to append to the catalog with its embedding. hash: of its content."""

    path: str
    size: int
    mtime_ns: int
    hash: str
    width: int
    height: int


class Collection:
    """An open collection.

    Reading never needs the lock and never writes; writing (an index run) takes it with
    `locked()`. A reader sees the manifest as it is on disk: it is read again when the file
    changes (a writer saved it), found by a stat, not by reading it for every search.
    """

    def __init__(self, directory: Path, manifest: Manifest, catalog: Catalog) -> None:
        self.dir = Path(directory)
        self.catalog = catalog
        self._manifest = manifest
        self._manifest_seen = self.manifest_signature()
        self.dim, self.embedding_dtype = manifest.dim, manifest.embedding_dtype
        self._lock_fd: int | None = None
        self.indexes = CollectionIndexes(self)
        self.search_device = "auto"
        """Where FAISS searches run: auto (a GPU when faiss sees one), cpu, cuda or cuda:N."""

    # -- opening ---------------------------------------------------------------------------

    @staticmethod
    def exists(directory: Path) -> bool:
        """Whether directory holds a collection (a manifest, or a catalog recording its model)."""
        return opening.is_collection(Path(directory))

    @classmethod
    def create(
        cls,
        directory: Path,
        *,
        root: Path,
        model: ModelIdentity,
        dim: int,
        preprocess: dict | None = None,
        embedding_dtype: str = "float16",
    ) -> Collection:
        directory = Path(directory).resolve()
        if cls.exists(directory):
            raise CollectionError(f"a collection already exists in {directory}")
        opening.make_dir(directory)
        manifest = Manifest(
            model=model,
            dim=dim,
            root=opening.stored_root(Path(root).resolve(), directory),
            embedding_dtype=embedding_dtype,
            preprocess=dict(preprocess or {}),
        )
        catalog = Catalog(directory / CATALOG)
        if catalog.count_vectors() or catalog.count("error"):
            catalog.close()
            raise CollectionError(
                f"{directory / CATALOG} holds a catalog that records no model and has no "
                f"{MANIFEST}; move it away, or name another --index"
            )
        # The catalog's record first: from it a lost manifest is rebuilt.
        provenance.record(catalog, provenance.of_manifest(manifest))
        manifest.write(directory / MANIFEST)
        return cls(directory, manifest, catalog)

    @classmethod
    def open(cls, directory: Path, *, readonly: bool = False, verify: bool = True) -> Collection:
        """Open a collection; verify: refuse a manifest that disagrees with the catalog (False
        for `check`, which reports it)."""
        directory = Path(directory).resolve()
        if not cls.exists(directory):
            raise CollectionNotFound(
                f"{directory} is not a collection (no {MANIFEST}); "
                "create one with `retrieval index PHOTO_FOLDER --index DIR`"
            )
        catalog = Catalog(directory / CATALOG, readonly=readonly)
        try:
            manifest = opening.read_manifest(directory, catalog, verify=verify)
        except CollectionError:
            catalog.close()
            raise
        return cls(directory, manifest, catalog)

    @classmethod
    def open_or_create(
        cls,
        directory: Path,
        *,
        root: Path,
        model: ModelIdentity | None = None,
        dim: int | None = None,
        preprocess: dict | None = None,
        embedding_dtype: str = "float16",
    ) -> Collection:
        """Open the collection in directory for writing, refusing another `model` (None: any);
        or create one there indexing root, built with model, whose embeddings have dim values
        (both then needed; dim and preprocess matter only for a new collection)."""
        if cls.exists(directory):
            collection = cls.open(directory)
            if model is not None:
                try:
                    collection.check_model(model)
                except ModelMismatch:
                    collection.close()
                    raise
            return collection
        if model is None or dim is None:
            raise ValueError("a new collection needs its model and its embeddings' dimension")
        return cls.create(directory, root=root, model=model, dim=dim, preprocess=preprocess,
                          embedding_dtype=embedding_dtype)  # fmt: skip

    def close(self) -> None:
        self.catalog.close()
        self.unlock()

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def root(self) -> Path:
        """The indexed folder, absolute."""
        return (self.dir / self.manifest.root).resolve()

    def check_model(self, model: ModelIdentity) -> None:
        built = self.manifest.model
        if model != built:
            option = f"--model {built.name}"
            if built.pretrained:
                option += f" --pretrained {built.pretrained}"
            raise ModelMismatch(
                f"the collection in {self.dir} was built with model {built}, not {model}; "
                f"use {option}, or another --index for the other model"
            )

    # -- the manifest ------------------------------------------------------------------------

    @property
    def manifest(self) -> Manifest:
        """The manifest: the writer's own; a reader's as last saved (read again if it changed)."""
        if self._lock_fd is None:
            self._refresh_manifest()
        return self._manifest

    def manifest_signature(self) -> Hashable:
        """What tells one saved manifest from the next without reading it: a new file replaces
        the old on every write."""
        try:
            info = (self.dir / MANIFEST).stat()
        except FileNotFoundError:
            return None
        return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)

    def _refresh_manifest(self) -> None:
        seen = self.manifest_signature()
        if seen != self._manifest_seen:
            self._manifest = Manifest.read(self.dir / MANIFEST)
            self._manifest_seen = seen

    def save_manifest(self) -> None:
        """Write the manifest as it is in memory (the writer only)."""
        self._require_lock("saving the manifest")
        self._manifest.write(self.dir / MANIFEST)
        self._manifest_seen = self.manifest_signature()

    def record_encoder(self, weights_hash: str | None, *, backend: str, precision: str) -> None:
        """Remember what encodes this collection: the weights' hash (the key of cached ONNX
        exports), the backend and the precision."""
        manifest = self.manifest
        manifest.weights_hash = weights_hash
        manifest.backend, manifest.precision = backend, precision
        self.save_manifest()

    # -- the write lock ----------------------------------------------------------------------

    @property
    def writable(self) -> bool:
        """Whether this process holds the write lock."""
        return self._lock_fd is not None

    def lock(self) -> None:
        """Take the single-writer lock, or raise CollectionLocked at once.

        The OS drops a flock when its process dies, so a killed indexer never leaves it behind.
        The manifest is read again if a writer saved it since this collection was opened.
        """
        if self._lock_fd is not None:
            return
        fd = os.open(self.dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise CollectionLocked(
                f"{self.dir} is being updated by another indexer (pid {holder}); "
                "wait for it to finish, or stop it"
            ) from e
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._refresh_manifest()
        self._lock_fd = fd
        if not (self.dir / MANIFEST).is_file():  # lost, and rebuilt from the catalog's record
            self.save_manifest()

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @contextlib.contextmanager
    def locked(self) -> Iterator[Collection]:
        self.lock()
        try:
            yield self
        finally:
            self.unlock()

    def _require_lock(self, doing: str) -> None:
        if self._lock_fd is None:
            raise CollectionError(f"{doing} needs the collection's lock")

    # -- adding vectors ----------------------------------------------------------------------

    def append_images(self, vectors: np.ndarray, images: Sequence[NewImage]) -> list[Item]:
        """Store the embeddings float32 (n, d) of n image files and commit the files' catalog
        rows (replacing any at the same paths), in one transaction; returns the new items.

        Inside a `catalog.transaction()` it commits with that transaction.
        """

        def put(first: int) -> list[Item]:
            items = []
            for row, image in enumerate(images, first):
                item_id = self.catalog.put_ok(image.path, image.size, image.mtime_ns, image.hash,
                                              image.width, image.height, row)  # fmt: skip
                items.append(Item(item_id, image.path, image.size, image.mtime_ns, image.hash,
                                  image.width, image.height, STATUS_OK, None, row))  # fmt: skip
            return items

        return self._append(IMAGE, vectors, len(images), put)

    def append_texts(self, vectors: np.ndarray, texts: Sequence[str]) -> list[int]:
        """Store the embeddings float32 (n, d) of n new texts and commit the texts, in one
        transaction; returns their ids."""
        return self._append(TEXT, vectors, len(texts), partial(self.catalog.put_texts, texts))

    def _append(self, kind: str, vectors: np.ndarray, n: int, put: Callable[[int], T]) -> T:
        """Claim n rows, write the vectors there (durably), then commit the catalog rows that
        point at them: a crash leaves at most unreferenced rows, which later writes reuse."""
        self._require_lock("adding vectors")
        if len(vectors) != n:
            raise ValueError(f"{len(vectors)} vectors for {n} items")
        with self.catalog.transaction():
            first = self.catalog.reserve_rows(n, kind)
            self.store_for(kind).write(first, vectors)
            return put(first)

    # -- reading vectors, searching and keeping the indexes current ---------------------------

    def store_for(self, kind: str = IMAGE) -> EmbeddingStore:
        """The embeddings file of images (or texts) the catalog names now: compaction writes a
        new one, so read it in the same snapshot as the rows to be read from it."""
        space = SPACES[kind]
        name = self.catalog.meta_value(space.file_key) or space.embeddings
        return EmbeddingStore(self.dir / name, self.dim, self.embedding_dtype)

    @property
    def store(self) -> EmbeddingStore:
        return self.store_for(IMAGE)

    @property
    def text_store(self) -> EmbeddingStore:
        return self.store_for(TEXT)

    def vectors(self, kind: str = IMAGE) -> tuple[np.ndarray, np.ndarray, int]:
        """(ids int64 (n,), vectors float32 (n, d), version) of one committed state of the
        collection's images (or texts)."""
        ids, view, version = self.stored(kind)
        return ids, view.store.read(view.rows), version

    def stored(self, kind: str = IMAGE) -> tuple[np.ndarray, StoredVectors, int]:
        """Like vectors(), but the vectors are a lazy view of the memory-mapped store, read and
        converted to float32 only in the chunks asked for."""
        with self.catalog.snapshot():
            version = self.catalog.version_of(kind)
            ids, rows = self.catalog.vector_rows(kind)
            store = self.store_for(kind)
        return np.asarray(ids, dtype=np.int64), store.view(rows), version

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        kind: str = IMAGE,
        allowed_ids: np.ndarray | None = None,
        device: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k best (scores float32 (q, k), ids int64 (q, k)) for queries float32 (q, d);
        allowed_ids (int64) restricts them to those ids. See CollectionIndexes.search."""
        return self.indexes.search(queries, k, kind=kind, allowed_ids=allowed_ids, device=device)

    def faiss_index(self, kind: str = IMAGE) -> faiss.Index:
        """The FAISS index of the committed images (or texts), current (see CollectionIndexes)."""
        return self.indexes.faiss_index(kind)

    def reindex(
        self,
        factory: str | None = None,
        *,
        memory_budget: int | None = None,
        target_recall: float | None = None,
        build: Builder | None = None,
    ) -> Tuning:
        """Rebuild the image index from the stored embeddings, encoding nothing.

        factory: a FAISS factory string, or None to choose one from the size and memory_budget
        (and keep choosing as the collection grows). The search depth is tuned to the smallest
        value reaching target_recall (default: the collection's, 0.95) against exact search.
        build: makes the chosen factory's index (default: ann.build; see indexes.Builder).
        """
        self._require_lock("reindex()")
        return self.indexes.reindex(
            factory, memory_budget=memory_budget, target_recall=target_recall, build=build
        )

    def sync_index(self, kind: str = IMAGE) -> None:
        """Bring the saved FAISS index up to the catalog (the writer calls this)."""
        self._require_lock("sync_index()")
        self.indexes.faiss_index(kind)

    def compact(self) -> Compaction:
        """Drop the embedding rows no item uses (see index.compaction)."""
        self._require_lock("compact()")
        return compaction.compact(self)

    def stats(self) -> CollectionStats:
        size = sum(f.stat().st_size for f in self.dir.iterdir() if f.is_file())
        return CollectionStats(
            images=self.catalog.count("ok"),
            skipped=self.catalog.count("error"),
            texts=self.catalog.count_texts(),
            bytes_on_disk=size,
        )
