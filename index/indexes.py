"""A collection's FAISS indexes (of its images and of its texts): kept current with the catalog,
saved by the writer, searched with per-call settings; small flat ones searched exactly in numpy.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from . import exact
from .catalog import IMAGE, TEXT, Catalog
from .errors import CollectionError
from .layout import SPACES
from .manifest import Manifest
from .vectors import EmbeddingStore, StoredVectors

if TYPE_CHECKING:  # faiss costs a fifth of a second to import; small exact searches skip it
    import faiss

    from .tuning import Tuning

Builder = Callable[..., "faiss.Index"]
"""Makes the index of a factory: (factory, vectors (n, d), ids (n,), *, dim) -> faiss.Index,
as ann.build does."""


class Storage(Protocol):
    """What the indexes need of their collection (an open `Collection`)."""

    dir: Path
    catalog: Catalog
    search_device: str

    def store_for(self, kind: str = IMAGE) -> EmbeddingStore: ...

    @property
    def manifest(self) -> Manifest: ...

    @property
    def writable(self) -> bool: ...

    def manifest_signature(self) -> Hashable: ...

    def save_manifest(self) -> None: ...

    def stored(self, kind: str = IMAGE) -> tuple[np.ndarray, StoredVectors, int]: ...


class CollectionIndexes:
    """The indexes of one open collection, and what is kept of them in memory between searches
    (a long-lived process, the web app, must not load them for every query)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._exact_cache: dict[str, tuple[int, np.ndarray, np.ndarray]] = {}
        self._index_cache: dict[str, tuple[Hashable, faiss.Index]] = {}

    def faiss_index(self, kind: str = IMAGE) -> faiss.Index:
        """The FAISS index of the committed images (or texts).

        The saved index when it is current; otherwise the saved one brought up to date in place
        (catalog ids are never reused, so the id sets' difference is the change), or rebuilt when
        it cannot be updated or the automatic choice has moved on. Saved when holding the lock.
        Kept in memory until the catalog, the manifest or the saved file changes.
        """
        storage = self.storage
        path = storage.dir / SPACES[kind].faiss_index
        key = (storage.catalog.version_of(kind), storage.manifest_signature(), _mtime(path))
        cached = self._index_cache.get(kind)
        if cached is None or cached[0] != key:
            cached = (key, self._current_index(kind, path))
            self._index_cache[kind] = cached
        return cached[1]

    def _current_index(self, kind: str, path: Path) -> faiss.Index:
        from . import vector_index

        storage = self.storage
        saved_version = getattr(storage.manifest, SPACES[kind].manifest_version)
        if saved_version == storage.catalog.version_of(kind) and path.is_file():
            return vector_index.load(path)
        ids, vectors, version = storage.stored(kind)
        index = self._updated(kind, path, ids, vectors)
        if index is None:
            index = self._rebuilt(kind, ids, vectors)
        if storage.writable:
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
        re-ranked exactly from the stored embeddings. device (default: the collection's
        search_device) says where FAISS searches: a GPU when faiss sees one, unless "cpu".
        """
        storage = self.storage
        allowed = None if allowed_ids is None else np.asarray(allowed_ids, dtype=np.int64)
        manifest = storage.manifest
        flat = kind == TEXT or manifest.factory == "Flat"
        if flat and storage.catalog.count_vectors(kind) <= exact.EXACT_LIMIT:
            return self._exact(queries, k, kind, allowed)
        from . import ann, inspect, vector_index

        params = dict(manifest.search_params) if kind == IMAGE else {}
        refine = params.pop("refine", 0)
        depth = k * refine if refine else k
        index = self._search_index(kind, depth, params, allowed, device)
        few = allowed is not None and len(allowed) <= exact.EXACT_LIMIT
        if few and inspect.depth_parameter(index) is not None:
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

        storage = self.storage
        factory = storage.manifest.factory
        gpu = vector_index.gpu_device(device or storage.search_device)
        if gpu is None or (kind == IMAGE and "HNSW" in factory):  # no GPU HNSW
            return self.faiss_index(kind)
        path = storage.dir / SPACES[kind].faiss_index
        # A reindex rewrites the index without changing the catalog's version; its file's time
        # and the factory tell the copies apart.
        version = (storage.catalog.version_of(kind), factory, _mtime(path), gpu)
        loaded: list[faiss.Index] = []

        def load() -> faiss.Index:
            loaded.append(self.faiss_index(kind))
            return loaded[0]

        key = (str(storage.dir), kind)
        copy = vector_index.GPU_COPIES.get(key, version, gpu, load)
        if copy is not None and vector_index.runs_on_gpu(copy, depth, params, allowed is not None):
            return copy
        return loaded[0] if loaded else self.faiss_index(kind)

    def _vectors_of(self, ids: np.ndarray, kind: str) -> np.ndarray:
        """The stored vectors float32 (n, d) of these ids; NaN rows for ids no longer stored."""
        storage = self.storage
        with storage.catalog.snapshot():
            rows = storage.catalog.rows_of(ids, kind)
            store = storage.store_for(kind)
        vectors = np.full((len(ids), storage.manifest.dim), np.nan, dtype=np.float32)
        known = rows >= 0
        vectors[known] = store.read(rows[known])
        return vectors

    def _exact(
        self, queries: np.ndarray, k: int, kind: str, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact inner-product search in numpy over the stored vectors (or the allowed ones)."""
        ids, vectors = self._exact_vectors(kind)
        if allowed is not None:
            keep = np.isin(ids, allowed)
            ids, vectors = ids[keep], vectors[keep]
        return exact.search(queries, ids, vectors, k)

    def _exact_vectors(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 (n,), vectors float32 (n, d)) of the committed state, read once and kept
        while the catalog's version stays, so that a long-lived process searches from memory."""
        catalog = self.storage.catalog
        with catalog.snapshot():
            version = catalog.version_of(kind)
            cached = self._exact_cache.get(kind)
            if cached is not None and cached[0] == version:
                return cached[1], cached[2]
            ids, rows = catalog.vector_rows(kind)
            store = self.storage.store_for(kind)
        ids_array = np.asarray(ids, dtype=np.int64)
        vectors = store.read(np.asarray(rows, dtype=np.int64))
        finite = np.isfinite(vectors).all(axis=1)  # a damaged row is never returned
        ids_array, vectors = ids_array[finite], vectors[finite]
        self._exact_cache[kind] = (version, ids_array, vectors)
        return ids_array, vectors

    # -- maintenance ---------------------------------------------------------------------------

    def _factory(self, kind: str, n: int) -> str:
        from . import ann

        manifest = self.storage.manifest
        if kind == TEXT:
            return "Flat"
        if manifest.auto_index:
            return ann.choose_factory(n, manifest.dim, manifest.memory_budget).factory
        return manifest.factory

    def _updated(
        self, kind: str, path: Path, ids: np.ndarray, vectors: StoredVectors
    ) -> faiss.Index | None:
        from . import ann, inspect, vector_index

        built = "Flat" if kind == TEXT else self.storage.manifest.factory
        if not path.is_file() or self._factory(kind, len(ids)) != built:
            return None
        index = vector_index.load(path)
        held = vector_index.index_ids(index)
        gone = np.setdiff1d(held, ids)
        if gone.size and not inspect.supports_removal(index):
            return None
        if gone.size:
            index.remove_ids(gone)
        new = np.flatnonzero(~np.isin(ids, held))
        for start in range(0, len(new), ann.CHUNK):
            chunk = new[start : start + ann.CHUNK]
            rows = vectors[chunk]
            finite = np.isfinite(rows).all(axis=1)  # a damaged row is never indexed
            index.add_with_ids(rows[finite], ids[chunk][finite])
        return index

    def _rebuilt(
        self, kind: str, ids: np.ndarray, vectors: StoredVectors, build: Builder | None = None
    ) -> faiss.Index:
        from . import ann, inspect, tuning

        storage = self.storage
        manifest = storage.manifest
        ids, vectors = _finite(ids, vectors)
        factory = self._factory(kind, len(ids))
        try:
            index = (build or ann.build)(factory, vectors, ids, dim=manifest.dim)
        except (ValueError, RuntimeError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CollectionError(f"cannot build index {factory} in {storage.dir}: {reason}") from e
        if kind == IMAGE:
            tuned = tuning.tune(index, vectors, ids, target_recall=manifest.target_recall)
            manifest.factory = factory
            manifest.search_params = tuned.search_params()
            manifest.tuning = asdict(tuned)
            manifest.index_updates = "in place" if inspect.supports_removal(index) else "rebuilt"
        return index

    def _save(self, kind: str, index: faiss.Index, version: int) -> None:
        from . import vector_index

        space = SPACES[kind]
        vector_index.save(index, self.storage.dir / space.faiss_index)
        # The manifest is written after the index: a crash in between leaves it stale, never wrong.
        setattr(self.storage.manifest, space.manifest_version, version)
        self.storage.save_manifest()

    def reindex(
        self,
        factory: str | None = None,
        *,
        memory_budget: int | None = None,
        target_recall: float | None = None,
        build: Builder | None = None,
    ) -> Tuning:
        """Rebuild the image index from the stored embeddings (see Collection.reindex); build
        (default: ann.build) makes the index of the factory chosen, the same way."""
        from .tuning import Tuning

        manifest = self.storage.manifest
        manifest.auto_index = factory is None
        manifest.memory_budget = memory_budget
        if target_recall is not None:
            manifest.target_recall = target_recall
        if factory is not None:
            manifest.factory = factory
        ids, vectors, version = self.storage.stored(IMAGE)
        index = self._rebuilt(IMAGE, ids, vectors, build)
        self._save(IMAGE, index, version)
        return Tuning(**manifest.tuning)


def _finite(ids: np.ndarray, vectors: StoredVectors) -> tuple[np.ndarray, StoredVectors]:
    """The ids and vectors without damaged (not finite) rows, which are never indexed."""
    keep = np.ones(len(ids), dtype=bool)
    for start in range(0, len(ids), 65_536):
        keep[start : start + 65_536] = np.isfinite(vectors[start : start + 65_536]).all(axis=1)
    if keep.all():
        return ids, vectors
    return ids[keep], vectors.store.view(vectors.rows[keep])


def _mtime(path: Path) -> int | None:
    """The file's modification time in ns; None when there is no file."""
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None
