"""A collection: one directory holding the manifest, catalog, embeddings and FAISS index."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .catalog import IMAGE, TEXT, Catalog
from .errors import CollectionError, CollectionLocked, CollectionNotFound, ModelMismatch
from .manifest import Manifest, ModelIdentity
from .vectors import EmbeddingStore, StoredVectors

if TYPE_CHECKING:  # faiss costs a fifth of a second to import; small exact searches skip it
    import faiss

    from .ann import Tuning

NUMPY_EXACT_LIMIT = 50_000
"""Exact searches over at most this many vectors run in numpy, without loading FAISS."""

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
        self._exact_cache: dict[str, tuple[int, np.ndarray, np.ndarray]] = {}
        self._index_cache: dict[str, tuple[tuple, faiss.Index]] = {}
        self.search_device = "auto"
        """Where FAISS searches run: auto (a GPU when faiss sees one), cpu, cuda or cuda:N."""

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

    def stored(self, kind: str = IMAGE) -> tuple[np.ndarray, StoredVectors, int]:
        """Like vectors(), but the vectors are a lazy view of the memory-mapped store, read and
        converted to float32 only in the chunks asked for."""
        with self.catalog.snapshot():
            version = self.catalog.version_of(kind)
            ids, rows = self.catalog.vector_rows(kind)
        return np.asarray(ids, dtype=np.int64), self.stores[kind].view(rows), version

    def faiss_index(self, kind: str = IMAGE) -> faiss.Index:
        """The FAISS index of the committed images (or texts).

        The saved index when it is current; otherwise the saved one brought up to date in place
        (catalog ids are never reused, so the id sets' difference is the change), or rebuilt when
        it cannot be updated or the automatic choice has moved on. Saved when holding the lock.
        Kept in memory until the catalog, the manifest or the saved file changes, so that a
        long-lived process (the web app) does not load it for every search.
        """
        space = _SPACES[kind]
        path = self.dir / space.faiss_index
        saved = Manifest.read(self.dir / MANIFEST)
        key = (
            self.catalog.version_of(kind),
            getattr(saved, space.manifest_version),
            saved.factory,
            path.stat().st_mtime_ns if path.is_file() else None,
        )
        cached = self._index_cache.get(kind)
        if cached is None or cached[0] != key:
            cached = (key, self._current_index(kind, path, saved))
            self._index_cache[kind] = cached
        return cached[1]

    def _current_index(self, kind: str, path: Path, saved: Manifest) -> faiss.Index:
        from . import vector_index

        space = _SPACES[kind]
        if (
            getattr(saved, space.manifest_version) == self.catalog.version_of(kind)
            and path.is_file()
        ):
            return vector_index.load(path)
        ids, vectors, version = self.stored(kind)
        index = self._updated(kind, path, ids, vectors)
        if index is None:
            index = self._rebuilt(kind, ids, vectors)
        if self._lock_fd is not None:
            self._save(kind, index, version)
        return index

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        kind: str = IMAGE,
        allowed_ids: np.ndarray | None = None,
        device: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k best (scores float32 (q, k), ids int64 (q, k)) for queries float32 (q, d).

        allowed_ids restricts the results to those ids. When they are few and the index is
        approximate, they are scored exactly instead: an IVF index probes only some lists, and
        a narrow filter would leave most of them empty. A compressed index's candidates are
        re-ranked exactly from the stored embeddings. device (default: self.search_device)
        says where FAISS searches: a GPU when faiss sees one, unless "cpu".
        """
        allowed = None if allowed_ids is None else np.asarray(allowed_ids, dtype=np.int64)
        exact = kind == TEXT or self._current_manifest().factory == "Flat"
        if exact and self.catalog.count_vectors(kind) <= NUMPY_EXACT_LIMIT:
            return self._exact(queries, k, kind, allowed)
        from . import ann, vector_index

        params = dict(self.manifest.search_params) if kind == IMAGE else {}
        refine = params.pop("refine", 0)
        depth = k * refine if refine else k
        index = self._search_index(kind, depth, params, allowed, device)
        few = allowed is not None and len(allowed) <= NUMPY_EXACT_LIMIT
        if few and ann.depth_parameter(index) is not None:
            return self._exact(queries, k, kind, allowed)
        scores, found = vector_index.search(index, queries, depth, allowed, params)
        if refine:
            return ann.rerank(queries, found, lambda ids: self._vectors_of(ids, kind), k)
        return scores, found

    def _search_index(
        self,
        kind: str,
        depth: int,
        params: dict[str, int],
        allowed: np.ndarray | None,
        device: str | None,
    ) -> faiss.Index:
        """The FAISS index to search: its GPU copy (made once per index version) when there is
        a GPU and the search can run there, else the index itself."""
        from . import vector_index

        gpu = vector_index.gpu_device(device or self.search_device)
        if gpu is None or (kind == IMAGE and "HNSW" in self.manifest.factory):  # no GPU HNSW
            return self.faiss_index(kind)
        path = self.dir / _SPACES[kind].faiss_index
        # A reindex rewrites the index without changing the catalog's version; its file's time
        # and the factory tell the copies apart.
        saved = path.stat().st_mtime_ns if path.is_file() else None
        version = (self.catalog.version_of(kind), self.manifest.factory, saved, gpu)
        loaded: list[faiss.Index] = []

        def load() -> faiss.Index:
            loaded.append(self.faiss_index(kind))
            return loaded[0]

        key = (str(self.dir), kind)
        copy = vector_index.GPU_COPIES.get(key, version, gpu, load)
        if copy is not None and vector_index.runs_on_gpu(copy, depth, params, allowed is not None):
            return copy
        return loaded[0] if loaded else self.faiss_index(kind)

    def _vectors_of(self, ids: np.ndarray, kind: str) -> np.ndarray:
        """The stored vectors float32 (n, d) of these ids; NaN rows for ids no longer stored."""
        rows = self.catalog.rows_of(ids, kind)
        vectors = np.full((len(ids), self.manifest.dim), np.nan, dtype=np.float32)
        known = rows >= 0
        vectors[known] = self.stores[kind].read(rows[known])
        return vectors

    def _current_manifest(self) -> Manifest:
        if self._lock_fd is None:
            self.manifest = Manifest.read(self.dir / MANIFEST)
        return self.manifest

    def _exact(
        self, queries: np.ndarray, k: int, kind: str, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact inner-product search in numpy over the stored vectors (or the allowed ones)."""
        ids_array, vectors = self._exact_vectors(kind)
        if allowed is not None:
            keep = np.isin(ids_array, allowed)
            ids_array, vectors = ids_array[keep], vectors[keep]
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        k = max(1, k)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        found = np.full((len(queries), k), -1, dtype=np.int64)
        if len(ids_array) == 0:
            return scores, found
        all_scores = queries @ vectors.T
        take = min(k, len(ids_array))
        for q, row in enumerate(all_scores):
            # Only scores at or above the take-th best can place (ties included); among equal
            # scores the smaller id goes first, as FAISS's flat index orders them.
            kth = np.partition(row, len(row) - take)[len(row) - take]
            candidates = np.flatnonzero(row >= kth)
            best = candidates[np.lexsort((ids_array[candidates], -row[candidates]))[:take]]
            scores[q, :take], found[q, :take] = row[best], ids_array[best]
        return scores, found

    def _exact_vectors(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 (n,), vectors float32 (n, d)) of the committed state, read once and kept
        while the catalog's version stays, so that a long-lived process searches from memory."""
        with self.catalog.snapshot():
            version = self.catalog.version_of(kind)
            cached = self._exact_cache.get(kind)
            if cached is not None and cached[0] == version:
                return cached[1], cached[2]
            ids, rows = self.catalog.vector_rows(kind)
        ids_array = np.asarray(ids, dtype=np.int64)
        vectors = self.stores[kind].read(np.asarray(rows, dtype=np.int64))
        self._exact_cache[kind] = (version, ids_array, vectors)
        return ids_array, vectors

    def _factory(self, kind: str, n: int) -> str:
        from . import ann

        if kind == TEXT:
            return "Flat"
        if self.manifest.auto_index:
            return ann.choose_factory(n, self.manifest.dim, self.manifest.memory_budget).factory
        return self.manifest.factory

    def _updated(
        self, kind: str, path: Path, ids: np.ndarray, vectors: StoredVectors
    ) -> faiss.Index | None:
        from . import ann, vector_index

        built = "Flat" if kind == TEXT else self.manifest.factory
        if not path.is_file() or self._factory(kind, len(ids)) != built:
            return None
        index = vector_index.load(path)
        held = vector_index.index_ids(index)
        gone = np.setdiff1d(held, ids)
        if gone.size and not ann.supports_removal(index):
            return None
        if gone.size:
            index.remove_ids(gone)
        new = np.flatnonzero(~np.isin(ids, held))
        for start in range(0, len(new), ann.CHUNK):
            chunk = new[start : start + ann.CHUNK]
            index.add_with_ids(vectors[chunk], ids[chunk])
        return index

    def _rebuilt(self, kind: str, ids: np.ndarray, vectors: StoredVectors) -> faiss.Index:
        from . import ann

        factory = self._factory(kind, len(ids))
        try:
            index = ann.build(factory, vectors, ids, dim=self.manifest.dim)
        except (ValueError, RuntimeError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CollectionError(f"cannot build index {factory} in {self.dir}: {reason}") from e
        if kind == IMAGE:
            tuning = ann.tune(index, vectors, ids, target_recall=self.manifest.target_recall)
            self.manifest.factory = factory
            self.manifest.search_params = tuning.search_params()
            self.manifest.tuning = asdict(tuning)
            self.manifest.index_updates = "in place" if ann.supports_removal(index) else "rebuilt"
        return index

    def _save(self, kind: str, index: faiss.Index, version: int) -> None:
        from . import vector_index

        space = _SPACES[kind]
        vector_index.save(index, self.dir / space.faiss_index)
        # The manifest is written after the index: a crash in between leaves it stale, never wrong.
        setattr(self.manifest, space.manifest_version, version)
        self.manifest.write(self.dir / MANIFEST)

    def reindex(
        self,
        factory: str | None = None,
        *,
        memory_budget: int | None = None,
        target_recall: float | None = None,
    ) -> Tuning:
        """Rebuild the image index from the stored embeddings, encoding nothing.

        factory: a FAISS factory string, or None to choose one from the size and memory_budget
        (and keep choosing as the collection grows). The search depth is tuned to the smallest
        value reaching target_recall (default: the collection's, 0.95) against exact search.
        """
        if self._lock_fd is None:
            raise CollectionError("reindex() needs the collection's lock")
        self.manifest.auto_index = factory is None
        self.manifest.memory_budget = memory_budget
        if target_recall is not None:
            self.manifest.target_recall = target_recall
        if factory is not None:
            self.manifest.factory = factory
        ids, vectors, version = self.stored(IMAGE)
        index = self._rebuilt(IMAGE, ids, vectors)
        self._save(IMAGE, index, version)
        from .ann import Tuning

        return Tuning(**self.manifest.tuning)

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
