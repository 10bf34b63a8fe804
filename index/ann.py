"""Choosing, building and tuning FAISS indexes for a collection's size and memory budget.

The choice follows autofaiss's reasoning: exact search while it is fast enough, then IVF-Flat,
then IVF-PQ (with an OPQ rotation) when the vectors would not fit the memory budget. Lists are
sized from the count (about 4 * sqrt(n)), and the search depth (nprobe, efSearch) is tuned to
the smallest value whose recall@10 against exact search reaches a target, measured on the
collection's own vectors.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from ._faiss import faiss

EXACT_LIMIT = 50_000
"""Up to this many vectors, exact search answers a query in a few milliseconds on a laptop."""


@dataclass(frozen=True)
class IndexPlan:
    """A FAISS factory string and why it was chosen."""

    factory: str
    reason: str


@dataclass(frozen=True)
class Tuning:
    """The tuned search depth (None for exact indexes) and what it measured.

    recall: mean recall@k against exact search on `queries` of the collection's own vectors;
    ms_per_query: single-query latency at that depth.
    """

    parameter: str | None
    value: int | None
    recall: float
    k: int
    queries: int
    ms_per_query: float

    def search_params(self) -> dict[str, int]:
        return {self.parameter: self.value} if self.parameter and self.value else {}


def choose_factory(n: int, dim: int, memory_budget: int | None = None) -> IndexPlan:
    """The index for n vectors of dimension dim within memory_budget bytes (None: no limit)."""
    flat_bytes = n * dim * 4
    if memory_budget is not None and memory_budget <= 0:
        raise ValueError(f"memory budget must be positive, not {memory_budget}")
    fits = memory_budget is None or flat_bytes <= memory_budget
    if n <= EXACT_LIMIT and fits:
        return IndexPlan("Flat", f"{n:,} vectors: exact search is fast enough")
    lists = ivf_lists(n)
    if fits:
        return IndexPlan(f"IVF{lists},Flat", f"{n:,} vectors fit in memory uncompressed")
    for m in (64, 48, 32, 24, 16, 8, 4):
        if dim % m == 0 and n * (m + 8) + lists * dim * 4 <= memory_budget:  # type: ignore[operator]
            # "np": no polysemous training, which inner-product search never uses and which
            # made a 100,000-vector build take 122 s instead of 17 s.
            return IndexPlan(
                f"OPQ{m},IVF{lists},PQ{m}np",
                f"{n:,} vectors need {flat_bytes / 2**20:,.0f} MiB uncompressed; "
                f"{m}-byte codes fit the budget",
            )
    raise ValueError(
        f"{n:,} vectors of dimension {dim} do not fit in {memory_budget:,} bytes even as "
        "4-byte codes; give a larger memory budget"
    )


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


def build(
    factory: str, vectors: np.ndarray, ids: np.ndarray, *, dim: int, seed: int = 0
) -> faiss.Index:
    """An inner-product index over vectors (n, dim) float32, keyed by int64 ids (n,).

    Trainable indexes are trained on a seeded sample of the vectors.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, dim)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    try:
        inner = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ValueError("FAISS cannot parse this factory string (try Flat, IVF1024,Flat, "
                         "IVF1024,PQ64 or HNSW32)") from e  # fmt: skip
    index = faiss.IndexIDMap2(inner)
    if not index.is_trained:
        lists = _list_count(factory)
        if len(vectors) < max(lists, 1):
            raise ValueError(
                f"it needs at least {max(lists, 1):,} vectors to train on and there are "
                f"{len(vectors):,}; choose fewer lists or --auto"
            )
        sample = training_size(factory, len(vectors)) or len(vectors)
        rows = np.random.default_rng(seed).choice(len(vectors), size=sample, replace=False)
        index.train(vectors[np.sort(rows)])
    if len(vectors):
        index.add_with_ids(vectors, ids)
    return index


def supports_removal(index: faiss.Index) -> bool:
    """Whether ids can be removed in place (flat and IVF indexes), rather than rebuilt (HNSW)."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    return not isinstance(inner, faiss.IndexHNSW)


def depth_parameter(index: faiss.Index) -> str | None:
    """The name of the index's search-depth knob: nprobe (IVF), efSearch (HNSW), or None."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    if isinstance(inner, faiss.IndexIVF):
        return "nprobe"
    if isinstance(inner, faiss.IndexHNSW):
        return "efSearch"
    return None


def search_parameters(
    index: faiss.Index, params: dict[str, int] | None, selector: faiss.IDSelector | None
) -> faiss.SearchParameters | None:
    """Per-call search parameters: the depth knob and an id filter, never set on the index."""
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
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if isinstance(inner, faiss.IndexPreTransform):
        # A pre-transform (OPQ) passes the parameters on to the index inside it.
        wrapper = faiss.SearchParametersPreTransform()
        wrapper.index_params = result
        wrapper.sel = result.sel
        wrapper.keep = result  # keep the inner object alive as long as the wrapper
        return wrapper
    return result


def tune(
    index: faiss.Index,
    vectors: np.ndarray,
    ids: np.ndarray,
    *,
    target_recall: float = 0.95,
    k: int = 10,
    queries: int = 500,
    seed: int = 0,
) -> Tuning:
    """The smallest search depth whose recall@k against exact search reaches target_recall.

    Queries are a seeded sample of the collection's own vectors; each one's own entry is left
    out of both result lists, so the query is held out of what it is measured on.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    rows = np.random.default_rng(seed).choice(len(vectors), size=min(queries, len(vectors)),
                                              replace=False)  # fmt: skip
    sample, own = vectors[rows], np.asarray(ids, dtype=np.int64)[rows]
    depth = depth_parameter(index)
    if depth is None:
        return Tuning(None, None, 1.0, k, len(rows), _latency(index, sample, k, None))
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    _, truth_rows = exact.search(sample, k + 1)
    all_ids = np.asarray(ids, dtype=np.int64)
    truth = [_others(all_ids[row[row >= 0]], o, k) for row, o in zip(truth_rows, own, strict=True)]
    measured: list[tuple[int, float]] = []
    for value in _depths(index, depth):
        params = search_parameters(index, {depth: value}, None)
        _, found = index.search(sample, k + 1, params=params)
        hits = [
            len(set(_others(f, o, k)) & set(t)) / max(len(t), 1)
            for f, o, t in zip(found, own, truth, strict=True)
        ]
        measured.append((value, float(np.mean(hits))))
        if measured[-1][1] >= target_recall:
            break
    value, recall = measured[-1]
    if recall < target_recall:
        # Out of reach (compressed codes): the smallest depth within a point of the best, not
        # the deepest, which costs far more for nothing.
        top = max(r for _, r in measured)
        value, recall = next((v, r) for v, r in measured if r >= top - 0.01)
    latency = _latency(index, sample[:100], k, search_parameters(index, {depth: value}, None))
    return Tuning(depth, value, recall, k, len(rows), latency)


def _others(found: np.ndarray, own: int, k: int) -> list[int]:
    """The first k results that are not the query itself."""
    return [int(i) for i in found if i != own and i >= 0][:k]


def _depths(index: faiss.Index, depth: str) -> list[int]:
    if depth == "nprobe":
        lists = _ivf(index).nlist
        return [v for v in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if v < lists] + [lists]
    return [16, 32, 64, 128, 256, 512, 1024]


def _ivf(index: faiss.Index) -> faiss.IndexIVF:
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    return faiss.extract_index_ivf(inner)


def _latency(
    index: faiss.Index, queries: np.ndarray, k: int, params: faiss.SearchParameters | None
) -> float:
    """Milliseconds per query, one query at a time."""
    started = time.perf_counter()
    for query in queries:
        index.search(query[None, :], k, params=params)
    return 1000 * (time.perf_counter() - started) / max(len(queries), 1)
