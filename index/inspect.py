"""Reading back what a built FAISS index is: the ids it holds, its kind, its search-depth knob."""

from __future__ import annotations

import numpy as np

from ._faiss import faiss


def holds_ids(index: faiss.Index) -> bool:
    """Whether the index stores arbitrary ids itself: an IVF index, bare or behind OPQ."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    return isinstance(index, faiss.IndexIVF)


def core(index: faiss.Index) -> faiss.Index:
    """The index doing the search, behind an id map and a pre-transform (OPQ)."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2):
        index = faiss.downcast_index(index.index)
    if isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    return index


def ivf(index: faiss.Index) -> faiss.IndexIVF:
    """The IVF index inside an index built here (IVF-Flat or IVF-PQ, bare or behind OPQ)."""
    return faiss.extract_index_ivf(core(index))


def held_ids(index: faiss.Index) -> np.ndarray:
    """The ids an index built here holds (an id map's, or an IVF index's lists): int64."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2):
        return faiss.vector_to_array(index.id_map).astype(np.int64, copy=False)
    lists = ivf(index).invlists
    found = []
    for number in range(lists.nlist):
        size = lists.list_size(number)
        if size:
            found.append(faiss.rev_swig_ptr(lists.get_ids(number), size).copy())
    return np.concatenate(found).astype(np.int64) if found else np.zeros(0, dtype=np.int64)


def supports_removal(index: faiss.Index) -> bool:
    """Whether ids can be removed in place (flat and IVF indexes), rather than rebuilt (HNSW)."""
    return not isinstance(core(index), faiss.IndexHNSW)


def is_compressed(index: faiss.Index) -> bool:
    """Whether the index scores lossy codes (PQ, scalar quantisers) rather than the vectors."""
    inner = core(index)
    if isinstance(inner, faiss.IndexHNSW):
        inner = faiss.downcast_index(inner.storage)
    return not isinstance(inner, faiss.IndexIVFFlat | faiss.IndexFlat)


def depth_parameter(index: faiss.Index) -> str | None:
    """The name of the index's search-depth knob: nprobe (IVF), efSearch (HNSW), or None."""
    inner = core(index)
    if isinstance(inner, faiss.IndexIVF) or gpu_index_kind(inner) == "ivf":
        return "nprobe"
    if isinstance(inner, faiss.IndexHNSW):
        return "efSearch"
    return None


def gpu_index_kind(index: faiss.Index) -> str | None:
    """'ivf' or 'flat' for a GPU index of that kind (faiss built with GPU support), else None."""
    if hasattr(faiss, "GpuIndexIVF") and isinstance(index, faiss.GpuIndexIVF):
        return "ivf"
    if hasattr(faiss, "GpuIndexFlat") and isinstance(index, faiss.GpuIndexFlat):
        return "flat"
    return None
