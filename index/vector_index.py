"""FAISS indexes keyed by catalog ids, searched with per-call parameters, on the GPU when
faiss sees one.

The device is chosen at run time: `gpu_device` decides from the request and `gpu_count()` (which
tests replace), and `GpuCopies` keeps one GPU copy per index version. Searches that the GPU
cannot run as asked (an id filter, HNSW, k or nprobe above the GPU's limit) stay on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from pathlib import Path

import numpy as np

from . import ann, inspect
from ._faiss import faiss
from .atomic import write_with_atomic
from .errors import CorruptCollection, StorageError

GPU_MAX_K = 2048
"""The largest k and nprobe faiss's GPU indexes select (GPU_MAX_SELECTION_K)."""


def search(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    allowed_ids: np.ndarray | None = None,
    params: dict[str, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The k best (scores, ids) for each query: float32 (q, k) and int64 (q, k).

    allowed_ids restricts the search to those ids, and params sets the search depth
    ({"nprobe": 16}); both are passed for this call only. Missing results have id -1.
    All queries go to FAISS in one call, which batches them itself (on a GPU too).
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = max(1, min(k, max(index.ntotal, 1)))
    selector = None
    if allowed_ids is not None:
        selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed_ids, dtype=np.int64))
    search_params = ann.search_parameters(index, params, selector)
    if search_params is None:
        return index.search(queries, k)
    return index.search(queries, k, params=search_params)


def index_ids(index: faiss.Index) -> np.ndarray:
    """The ids an index holds: int64 (ntotal,)."""
    return inspect.held_ids(index)


def save(index: faiss.Index, path: Path) -> None:
    try:
        write_with_atomic(path, lambda tmp: faiss.write_index(index, tmp))
    except (RuntimeError, OSError) as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise StorageError(
            f"cannot write {path} ({reason}); free some space (or make it writable) and run "
            "the command again (the stored embeddings are intact)"
        ) from e


def load(path: Path) -> faiss.Index:
    try:
        return faiss.read_index(str(path))
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CorruptCollection(
            f"{path} is not a readable FAISS index ({reason}); run `retrieval check --repair`"
        ) from e


# -- the GPU ------------------------------------------------------------------------------------


def gpu_count() -> int:
    """How many GPUs faiss sees (0 with a CPU-only faiss)."""
    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


def gpu_device(requested: str = "auto") -> int | None:
    """The GPU to search on, or None for the CPU.

    requested: "auto" (the first GPU when faiss sees one), "cpu", "cuda" / "gpu", or "cuda:N".
    A GPU asked for that faiss cannot see falls back to the CPU, which gives the same results.
    """
    name = requested.strip().lower()
    if name == "cpu":
        return None
    if name in ("auto", "cuda", "gpu"):
        number = 0
    elif name.startswith(("cuda:", "gpu:")) and name.split(":", 1)[1].isdigit():
        number = int(name.split(":", 1)[1])
    else:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {requested!r}")
    return number if number < gpu_count() else None


def runs_on_gpu(index: faiss.Index, k: int, params: dict[str, int] | None, filtered: bool) -> bool:
    """Whether faiss's GPU indexes can run this search as asked: flat and IVF indexes, no id
    filter, k and nprobe within the GPU's selection limit."""
    core = inspect.core(index)
    kind_ok = isinstance(core, faiss.IndexFlat | faiss.IndexIVFFlat | faiss.IndexIVFPQ)
    nprobe = (params or {}).get("nprobe", 0)
    return kind_ok and not filtered and k <= GPU_MAX_K and nprobe <= GPU_MAX_K


class GpuCopies:
    """One GPU copy per key (a collection's index), replaced when the index's version moves."""

    def __init__(self) -> None:
        self._copies: dict[Hashable, tuple[Hashable, faiss.Index | None]] = {}
        self._resources: dict[int, faiss.StandardGpuResources] = {}
        self.failures: dict[Hashable, str] = {}
        """Why an index could not be copied to the GPU (it is then searched on the CPU)."""

    def get(
        self, key: Hashable, version: Hashable, device: int, load: Callable[[], faiss.Index]
    ) -> faiss.Index | None:
        """The GPU copy of the index `load()` gives, for this key at this version; None when
        faiss cannot place it on the GPU."""
        held = self._copies.get(key)
        if held is not None and held[0] == version:
            return held[1]
        self._copies.pop(key, None)  # free the old copy's GPU memory before making the new one
        try:
            copy = to_gpu(load(), device, self._resources)
        except RuntimeError as e:  # a layout the GPU does not implement (PQ code size, ...)
            self.failures[key] = str(e).splitlines()[0] if str(e) else type(e).__name__
            copy = None
        self._copies[key] = (version, copy)
        return copy


def to_gpu(
    index: faiss.Index, device: int, resources: dict[int, faiss.StandardGpuResources]
) -> faiss.Index:
    """A copy of a CPU index on GPU `device`, full float32 (no float16 storage), so that its
    results match the CPU's up to ties. Id maps and OPQ stay on the host around it."""
    if device not in resources:
        resources[device] = faiss.StandardGpuResources()
    options = faiss.GpuClonerOptions()
    options.useFloat16 = False
    return faiss.index_cpu_to_gpu(resources[device], device, index, options)


GPU_COPIES = GpuCopies()
"""The process's GPU copies: a long-running server searches a collection's copy until the
collection changes."""
