"""Choosing, building and tuning FAISS indexes for a collection's size and memory budget.

The choice follows autofaiss's reasoning: exact search while it is fast enough, then IVF-Flat,
then IVF-PQ (with an OPQ rotation) when the vectors would not fit the memory budget. Lists are
sized from the count (about 4 * sqrt(n)), and the search depth (nprobe, efSearch) is tuned to
the smallest value whose recall@10 against exact search reaches a target, measured on the
collection's own vectors.

Compressed codes (PQ) alone stop short of a recall@10 of 0.95, so a compressed index is searched
for more candidates than asked and those are re-ranked exactly from the stored embeddings, read
from disk (memory-mapped), never held in memory by the index: tuning picks that factor too.

"Vectors" here may be a float32 array or any sequence-like view whose `view[rows]` (a slice,
an integer array or a boolean mask) gives float32 (m, d) rows, such as the collection's stored
embeddings; they are read in chunks, never all converted at once.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._faiss import faiss

EXACT_LIMIT = 50_000
"""Up to this many vectors, exact search answers a query in a few milliseconds on a laptop."""

CHUNK = 65_536
"""Vectors converted to float32 at a time when adding or computing exact ground truth."""

REFINE_FACTORS = (2, 4, 8, 16)
"""Candidates fetched per result (k * factor) before exact re-ranking of a compressed index."""


@dataclass(frozen=True)
class IndexPlan:
    """A FAISS factory string, why it was chosen, and the bytes it will take in memory."""

    factory: str
    reason: str
    bytes: int | None = None


@dataclass(frozen=True)
class Tuning:
    """The tuned search depth (None for exact indexes) and what it measured.

    recall: mean recall@k against exact search on `queries` of the collection's own vectors;
    ms_per_query: single-query latency at that depth. refine: candidates per result re-ranked
    exactly from the stored embeddings (0: none). warning: why the target was not reached.
    """

    parameter: str | None
    value: int | None
    recall: float
    k: int
    queries: int
    ms_per_query: float
    refine: int = 0
    target: float = 0.95
    warning: str | None = None

    def search_params(self) -> dict[str, int]:
        params = {self.parameter: self.value} if self.parameter and self.value else {}
        if self.refine:
            params["refine"] = self.refine
        return params


# -- the choice -------------------------------------------------------------------------------


def choose_factory(n: int, dim: int, memory_budget: int | None = None) -> IndexPlan:
    """The index for n vectors of dimension dim within memory_budget bytes (None: no limit)."""
    if memory_budget is not None and memory_budget <= 0:
        raise ValueError(f"memory budget must be positive, not {memory_budget}")

    def fits(factory: str) -> bool:
        return memory_budget is None or index_bytes(factory, n, dim) <= memory_budget

    flat_bytes = n * dim * 4
    if n <= EXACT_LIMIT and fits("Flat"):
        return _plan("Flat", f"{n:,} vectors: exact search is fast enough", n, dim)
    lists = ivf_lists(n)
    if fits(f"IVF{lists},Flat"):
        return _plan(f"IVF{lists},Flat", f"{n:,} vectors fit in memory uncompressed", n, dim)
    for m in (64, 48, 32, 24, 16, 8, 4):
        # "np": no polysemous training, which inner-product search never uses and which
        # made a 100,000-vector build take 122 s instead of 17 s.
        factory = f"OPQ{m},IVF{lists},PQ{m}np"
        if dim % m == 0 and fits(factory):
            return _plan(
                factory,
                f"{n:,} vectors need {flat_bytes / 2**20:,.0f} MiB uncompressed; "
                f"{m}-byte codes fit the budget, re-ranked from the stored embeddings",
                n,
                dim,
            )
    raise ValueError(
        f"{n:,} vectors of dimension {dim} do not fit in {memory_budget:,} bytes even as "
        "4-byte codes; give a larger memory budget"
    )


def _plan(factory: str, reason: str, n: int, dim: int) -> IndexPlan:
    return IndexPlan(factory, reason, index_bytes(factory, n, dim))


_FACTORY = re.compile(
    r"^(?:OPQ(?P<opq>\d+)(?:_(?P<opq_d>\d+))?,)?"
    r"(?:IVF(?P<lists>\d+),)?"
    r"(?P<kind>Flat|PQ(?P<m>\d+)(?:x(?P<bits>\d+))?(?:np)?|HNSW(?P<links>\d+)(?:,Flat)?)$"
)


def index_bytes(factory: str, n: int, dim: int) -> int:
    """Bytes that `build(factory, ...)` of n vectors takes, as written to disk and as loaded.

    Within a few percent of faiss.serialize_index for Flat, IVF-Flat, (OPQ+)IVF-PQ and HNSW.
    An index grown in place holds some slack on top (its lists grow by doubling) until it is
    saved and loaded again. Other factories raise ValueError.
    """
    parts = _FACTORY.match(factory.replace(" ", ""))
    if parts is None:
        raise ValueError(f"cannot estimate the memory of {factory!r}")
    lists = int(parts["lists"] or 0)
    kind = parts["kind"]
    if parts["links"]:  # HNSW: 2M links on level 0, about M/(M-1) above, level and offset
        links = int(parts["links"])
        per_vector = 4 * dim + 4 * (2 * links + links / (links - 1)) + 4 + 8
        return int(n * (per_vector + 8) + 256)  # + the id map
    if kind == "Flat":
        total = n * (4 * dim + 8)  # vectors and their ids (in the IVF lists or the id map)
    else:
        m, bits = int(parts["m"]), int(parts["bits"] or 8)
        total = n * (math.ceil(m * bits / 8) + 8) + dim * 2**bits * 4  # codes, ids, codebooks
    if lists:
        total += lists * dim * 4 + lists * 8  # centroids, list sizes
    if parts["opq"]:
        out = int(parts["opq_d"] or dim)
        total += out * dim * 4 + out * 4
    return int(total + 512)


def ivf_lists(n: int) -> int:
    """About 4 * sqrt(n) lists, a power of two, between 16 and 65,536."""
    return int(min(65536, max(16, 2 ** round(math.log2(4 * math.sqrt(max(n, 1)))))))


def training_size(factory: str, n: int) -> int:
    """How many vectors to train on: 64 per IVF list (faiss warns below 39), at most n."""
    lists = _list_count(factory)
    return min(n, max(64 * lists, 10_000)) if lists else 0


def _list_count(factory: str) -> int:
    """The number of IVF lists a factory string asks for (0 if none)."""
    for part in factory.split(","):
        digits = "".join(c for c in part.removeprefix("IVF").split("_")[0] if c.isdigit())
        if part.startswith("IVF") and digits:
            return int(digits)
    return 0


# -- building -----------------------------------------------------------------------------------


def build(factory: str, vectors: Any, ids: np.ndarray, *, dim: int, seed: int = 0) -> faiss.Index:
    """An inner-product index over vectors (n, dim), keyed by int64 ids (n,).

    Trainable indexes are trained on a seeded sample of the vectors. IVF indexes hold the ids
    in their lists (they add and remove by id themselves); others are wrapped in an IndexIDMap.
    """
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    try:
        inner = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ValueError("FAISS cannot parse this factory string (try Flat, IVF1024,Flat, "
                         "IVF1024,PQ64 or HNSW32)") from e  # fmt: skip
    index = inner if _holds_ids(inner) else faiss.IndexIDMap(inner)
    if not index.is_trained:
        lists = _list_count(factory)
        if len(ids) < max(lists, 1):
            raise ValueError(
                f"it needs at least {max(lists, 1):,} vectors to train on and there are "
                f"{len(ids):,}; choose fewer lists or --auto"
            )
        sample = training_size(factory, len(ids)) or len(ids)
        rows = np.random.default_rng(seed).choice(len(ids), size=sample, replace=False)
        index.train(_float32(vectors[np.sort(rows)], dim))
    for start in range(0, len(ids), CHUNK):
        stop = min(start + CHUNK, len(ids))
        index.add_with_ids(_float32(vectors[start:stop], dim), ids[start:stop])
    return index


def _float32(vectors: Any, dim: int) -> np.ndarray:
    return np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, dim)


def _holds_ids(index: faiss.Index) -> bool:
    """Whether the index stores arbitrary ids itself: an IVF index, bare or behind OPQ."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    return isinstance(index, faiss.IndexIVF)


def _core(index: faiss.Index) -> faiss.Index:
    """The index doing the search, behind an id map and a pre-transform (OPQ)."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2):
        index = faiss.downcast_index(index.index)
    if isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    return index


def held_ids(index: faiss.Index) -> np.ndarray:
    """The ids an index built here holds (an id map's, or an IVF index's lists): int64."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2):
        return faiss.vector_to_array(index.id_map).astype(np.int64, copy=False)
    lists = _ivf(index).invlists
    found = []
    for number in range(lists.nlist):
        size = lists.list_size(number)
        if size:
            found.append(faiss.rev_swig_ptr(lists.get_ids(number), size).copy())
    return np.concatenate(found).astype(np.int64) if found else np.zeros(0, dtype=np.int64)


def supports_removal(index: faiss.Index) -> bool:
    """Whether ids can be removed in place (flat and IVF indexes), rather than rebuilt (HNSW)."""
    return not isinstance(_core(index), faiss.IndexHNSW)


def is_compressed(index: faiss.Index) -> bool:
    """Whether the index scores lossy codes (PQ, scalar quantisers) rather than the vectors."""
    core = _core(index)
    if isinstance(core, faiss.IndexHNSW):
        core = faiss.downcast_index(core.storage)
    return not isinstance(core, faiss.IndexIVFFlat | faiss.IndexFlat)


def depth_parameter(index: faiss.Index) -> str | None:
    """The name of the index's search-depth knob: nprobe (IVF), efSearch (HNSW), or None."""
    core = _core(index)
    if isinstance(core, faiss.IndexIVF) or _is_gpu_index(core) == "ivf":
        return "nprobe"
    if isinstance(core, faiss.IndexHNSW):
        return "efSearch"
    return None


def _is_gpu_index(index: faiss.Index) -> str | bool:
    """'ivf' or 'flat' for a GPU index of that kind (faiss built with GPU support), else False."""
    if hasattr(faiss, "GpuIndexIVF") and isinstance(index, faiss.GpuIndexIVF):
        return "ivf"
    if hasattr(faiss, "GpuIndexFlat") and isinstance(index, faiss.GpuIndexFlat):
        return "flat"
    return False


def search_parameters(
    index: faiss.Index, params: dict[str, int] | None, selector: faiss.IDSelector | None
) -> faiss.SearchParameters | None:
    """Per-call search parameters: the depth knob and an id filter, never set on the index.

    A GPU IVF index takes nprobe the same way (SearchParametersIVF); it takes no id filter.
    """
    depth = depth_parameter(index)
    value = (params or {}).get(depth or "")
    if depth == "nprobe" and value:
        result = faiss.SearchParametersIVF(nprobe=int(value))
    elif depth == "efSearch" and value:
        result = faiss.SearchParametersHNSW(efSearch=int(value))
    elif selector is not None:
        result = faiss.SearchParameters()
    else:
        return None
    if selector is not None:
        result.sel = selector
    outer = faiss.downcast_index(index)
    if isinstance(outer, faiss.IndexIDMap | faiss.IndexIDMap2):
        outer = faiss.downcast_index(outer.index)
    if isinstance(outer, faiss.IndexPreTransform):
        # A pre-transform (OPQ) passes the parameters on to the index inside it.
        wrapper = faiss.SearchParametersPreTransform()
        wrapper.index_params = result
        wrapper.sel = result.sel
        wrapper.keep = result  # keep the inner object alive as long as the wrapper
        return wrapper
    return result


def rerank(
    queries: np.ndarray,
    candidates: np.ndarray,
    vectors_of: Callable[[np.ndarray], np.ndarray],
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The k best of each query's candidates by exact inner product.

    queries float32 (q, d); candidates int64 (q, c), -1 for none; vectors_of maps sorted unique
    ids (u,) to their float32 (u, d) vectors. Returns scores float32 (q, k) and ids int64 (q, k),
    best first, ties in id order, -1 (score -inf) where there are fewer than k candidates.
    """
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    unique = np.unique(candidates[candidates >= 0])
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    found = np.full((len(queries), k), -1, dtype=np.int64)
    if unique.size == 0:
        return scores, found
    vectors = vectors_of(unique)
    positions = np.searchsorted(unique, np.maximum(candidates, 0))
    for start in range(0, len(queries), 256):
        block = slice(start, start + 256)
        exact = np.einsum("qcd,qd->qc", vectors[positions[block]], queries[block])
        exact[candidates[block] < 0] = -np.inf
        for row, (values, ids) in enumerate(zip(exact, candidates[block], strict=True), start):
            order = np.lexsort((ids, -values))[:k]
            order = order[np.isfinite(values[order])]
            scores[row, : len(order)], found[row, : len(order)] = values[order], ids[order]
    return scores, found


# -- tuning -----------------------------------------------------------------------------------


def tune(
    index: faiss.Index,
    vectors: Any,
    ids: np.ndarray,
    *,
    target_recall: float = 0.95,
    k: int = 10,
    queries: int = 500,
    seed: int = 0,
    refine: bool | None = None,
) -> Tuning:
    """The smallest search depth whose recall@k against exact search reaches target_recall.

    Queries are a seeded sample of the collection's own vectors; each one's own entry is left
    out of both result lists, so the query is held out of what it is measured on. Ground truth
    is exact search over `vectors` in chunks. refine (default: when the index is compressed)
    also tunes how many candidates per result are re-ranked exactly from `vectors`. When the
    target is out of reach, the depth where recall stops growing is kept, and `warning` says so.
    """
    ids = np.asarray(ids, dtype=np.int64)
    rows = np.sort(np.random.default_rng(seed).choice(len(ids), size=min(queries, len(ids)),
                                                      replace=False))  # fmt: skip
    dim = index.d
    sample, own = _float32(vectors[rows], dim), ids[rows]
    depth = depth_parameter(index)
    if depth is None:
        latency = _latency(lambda q, _: index.search(q, k), sample[:100])
        return Tuning(None, None, 1.0, k, len(rows), latency, target=target_recall)
    truth = [_others(t, o, k) for t, o in zip(exact_neighbours(vectors, ids, sample, k + 1),
                                              own, strict=True)]  # fmt: skip
    refine = is_compressed(index) if refine is None else refine
    factors = REFINE_FACTORS if refine else (0,)
    order = np.argsort(ids, kind="stable")

    def vectors_of(wanted: np.ndarray) -> np.ndarray:
        return _float32(vectors[order[np.searchsorted(ids, wanted, sorter=order)]], dim)

    def search(q: np.ndarray, value: int, factor: int) -> np.ndarray:
        params = search_parameters(index, {depth: value}, None)
        _, found = index.search(q, (k + 1) * max(factor, 1), params=params)
        return rerank(q, found, vectors_of, k + 1)[1] if factor else found

    def recall(value: int, factor: int) -> float:
        found = search(sample, value, factor)
        return float(np.mean([len(set(_others(f, o, k)) & set(t)) / max(len(t), 1)
                              for f, o, t in zip(found, own, truth, strict=True)]))  # fmt: skip

    measured: list[tuple[int, float]] = []
    for value in _depths(index, depth):
        measured.append((value, recall(value, factors[-1])))
        if measured[-1][1] >= target_recall or _stopped_growing(measured):
            break
    value, reached = measured[-1]
    if reached < target_recall:
        # Out of reach: the smallest depth within a point of the best, not the deepest, which
        # costs far more for nothing.
        top = max(r for _, r in measured)
        value, reached = next((v, r) for v, r in measured if r >= top - 0.01)
    goal = min(target_recall, reached)
    factor = factors[-1]
    for smaller in factors[:-1]:
        smaller_recall = recall(value, smaller)
        if smaller_recall >= goal:
            factor, reached = smaller, smaller_recall
            break
    latency = _latency(lambda q, _: search(q, value, factor), sample[:100])
    warning = None
    if reached < target_recall:
        warning = (
            f"this index reaches recall@{k} {reached:.3f} at best against exact search, below "
            f"the {target_recall:g} asked for; give a larger memory budget or another factory"
        )
    return Tuning(depth, value, reached, k, len(rows), latency, factor, target_recall, warning)


def exact_neighbours(vectors: Any, ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The ids (q, k) int64 of each query's k best by inner product, best first.

    vectors (n, d) are read CHUNK rows at a time, so a memory-mapped float16 store is never
    converted to float32 all at once.
    """
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(ids), CHUNK):
        block = _float32(vectors[start : start + CHUNK], queries.shape[1])
        scores = np.concatenate([best_scores, queries @ block.T], axis=1)
        block_ids = np.broadcast_to(ids[start : start + len(block)], (len(queries), len(block)))
        candidates = np.concatenate([best_ids, block_ids], axis=1)
        keep = min(k, scores.shape[1])
        top = np.argpartition(-scores, keep - 1, axis=1)[:, :keep]
        best_scores = np.take_along_axis(scores, top, axis=1)
        best_ids = np.take_along_axis(candidates, top, axis=1)
    order = np.lexsort((best_ids, -best_scores), axis=1) if best_ids.size else best_ids
    return np.take_along_axis(best_ids, order, axis=1)


def _stopped_growing(measured: list[tuple[int, float]]) -> bool:
    """Recall grew by less than 0.002 over the last two doublings of the depth."""
    return len(measured) >= 3 and measured[-1][1] - measured[-3][1] < 0.002


def _others(found: np.ndarray, own: int, k: int) -> list[int]:
    """The first k results that are not the query itself."""
    return [int(i) for i in found if i != own and i >= 0][:k]


def _depths(index: faiss.Index, depth: str) -> list[int]:
    if depth == "nprobe":
        lists = _ivf(index).nlist
        return [v for v in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if v < lists] + [lists]
    return [16, 32, 64, 128, 256, 512, 1024]


def _ivf(index: faiss.Index) -> faiss.IndexIVF:
    return faiss.extract_index_ivf(_core(index))


def _latency(search: Callable[[np.ndarray, int], object], queries: np.ndarray) -> float:
    """Milliseconds per query, one query at a time."""
    started = time.perf_counter()
    for query in queries:
        search(query[None, :], 1)
    return 1000 * (time.perf_counter() - started) / max(len(queries), 1)
