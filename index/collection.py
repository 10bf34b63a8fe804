"""A collection: one directory holding the manifest, catalog, embeddings and FAISS index."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from . import vector_index
from .catalog import IMAGE, TEXT, Catalog
from .errors import CollectionError, CollectionLocked, CollectionNotFound, ModelMismatch
from .manifest import Manifest, ModelIdentity
from .vectors import EmbeddingStore

COLLECTION_DIRNAME = ".retrieval"
MANIFEST = "manifest.json"
CATALOG = "catalog.sqlite"
EMBEDDINGS = "embeddings.bin"
FAISS_INDEX = "index.faiss"
TEXT_EMBEDDINGS = "text_embeddings.bin"
TEXT_FAISS_INDEX = "texts.faiss"
LOCK = "lock"


@dataclass(frozen=True)
class _Space:
    """Where one kind of item (images or texts) keeps its vectors."""

    embeddings: str
    faiss_index: str
    manifest_version: str


_SPACES = {
    IMAGE: _Space(EMBEDDINGS, FAISS_INDEX, "index_version"),
    TEXT: _Space(TEXT_EMBEDDINGS, TEXT_FAISS_INDEX, "text_index_version"),
}


def default_dir(root: Path) -> Path:
    """Where `retrieval index ROOT` keeps its collection unless told otherwise."""
    return Path(root).resolve() / COLLECTION_DIRNAME


def find_collection(start: Path | None = None) -> Path:
    """The nearest collection directory at or above `start` (default: the current directory)."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / COLLECTION_DIRNAME
        if (candidate / MANIFEST).is_file():
            return candidate
    raise CollectionNotFound(
        f"no collection found in {here} or any folder above it; "
        "create one with `retrieval index PHOTO_FOLDER` or name one with --index DIR"
    )


@dataclass(frozen=True)
class CollectionStats:
    images: int
    skipped: int
    texts: int
    bytes_on_disk: int


class Collection:
    """An open collection.

    Reading never needs the lock; writing (an index run) takes it with `locked()`.
    """

    def __init__(self, directory: Path, manifest: Manifest, catalog: Catalog) -> None:
        self.dir = Path(directory)
        self.manifest = manifest
        self.catalog = catalog
        dim, dtype = manifest.dim, manifest.embedding_dtype
        self.stores = {
            kind: EmbeddingStore(self.dir / space.embeddings, dim, dtype)
            for kind, space in _SPACES.items()
        }
        self.store = self.stores[IMAGE]
        self.text_store = self.stores[TEXT]
        self._lock_fd: int | None = None

    # -- opening ---------------------------------------------------------------------------

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
        if (directory / MANIFEST).exists():
            raise CollectionError(f"a collection already exists in {directory}")
        directory.mkdir(parents=True, exist_ok=True)
        manifest = Manifest(
            model=model,
            dim=dim,
            root=_stored_root(Path(root).resolve(), directory),
            embedding_dtype=embedding_dtype,
            preprocess=dict(preprocess or {}),
        )
        catalog = Catalog(directory / CATALOG)
        # The manifest comes last: a directory without one is not a collection yet.
        manifest.write(directory / MANIFEST)
        return cls(directory, manifest, catalog)

    @classmethod
    def open(cls, directory: Path, *, readonly: bool = False) -> Collection:
        directory = Path(directory).resolve()
        if not (directory / MANIFEST).is_file():
            raise CollectionNotFound(
                f"{directory} is not a collection (no {MANIFEST}); "
                "create one with `retrieval index PHOTO_FOLDER --index DIR`"
            )
        manifest = Manifest.read(directory / MANIFEST)
        catalog = Catalog(directory / CATALOG, readonly=readonly)
        return cls(directory, manifest, catalog)

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

    # -- the write lock ----------------------------------------------------------------------

    def lock(self) -> None:
        """Take the single-writer lock, or raise CollectionLocked at once.

        The OS drops a flock when its process dies, so a killed indexer never leaves it behind.
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
        self._lock_fd = fd

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

    # -- vectors and the FAISS index -----------------------------------------------------------

    def vectors(self, kind: str = IMAGE) -> tuple[np.ndarray, np.ndarray, int]:
        """(ids int64 (n,), vectors float32 (n, d), version) of one committed state of the
        collection's images (or texts)."""
        with self.catalog.snapshot():
            version = self.catalog.version_of(kind)
            ids, rows = self.catalog.vector_rows(kind)
        return np.asarray(ids, dtype=np.int64), self.stores[kind].read(rows), version

    def faiss_index(self, kind: str = IMAGE) -> faiss.Index:
        """The FAISS index of the committed images (or texts): the saved one if it is current,
        else one rebuilt from the stored embeddings (and saved, when holding the lock)."""
        space = _SPACES[kind]
        path = self.dir / space.faiss_index
        saved_version = getattr(Manifest.read(self.dir / MANIFEST), space.manifest_version)
        if saved_version == self.catalog.version_of(kind) and path.is_file():
            return vector_index.load(path)
        ids, vectors, version = self.vectors(kind)
        index = vector_index.build(self.manifest.factory, vectors, ids, dim=self.manifest.dim)
        if self._lock_fd is not None:
            vector_index.save(index, path)
            # The manifest is written after the index: a crash in between leaves it stale, never
            # wrong.
            setattr(self.manifest, space.manifest_version, version)
            self.manifest.write(self.dir / MANIFEST)
        return index

    def sync_index(self, kind: str = IMAGE) -> None:
        """Bring the saved FAISS index up to the catalog (the writer calls this)."""
        if self._lock_fd is None:
            raise CollectionError("sync_index() needs the collection's lock")
        self.faiss_index(kind)

    def stats(self) -> CollectionStats:
        size = sum(f.stat().st_size for f in self.dir.iterdir() if f.is_file())
        return CollectionStats(
            images=self.catalog.count("ok"),
            skipped=self.catalog.count("error"),
            texts=self.catalog.count_texts(),
            bytes_on_disk=size,
        )


def _stored_root(root: Path, directory: Path) -> str:
    """Store the root relative to the collection when the collection lives inside it."""
    try:
        return os.path.relpath(root, directory) if directory.is_relative_to(root) else str(root)
    except ValueError:
        return str(root)
