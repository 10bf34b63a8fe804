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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import exact
from ._faiss import faiss
from .inspect import depth_parameter, holds_ids, ivf
from .vectors import as_float32

CHUNK = 65_536
"""Vectors converted to float32 at a time when adding or computing exact ground truth."""


@dataclass(frozen=True)
class IndexPlan:
    """A FAISS factory string, why it was chosen, and the bytes it will take in memory."""

    factory: str
    reason: str
    bytes: int | None = None


# -- the choice -------------------------------------------------------------------------------


def choose_factory(n: int, dim: int, memory_budget: int | None = None) -> IndexPlan:
    """The index for n vectors of dimension dim within memory_budget bytes (None: no limit)."""
    if memory_budget is not None and memory_budget <= 0:
        raise ValueError(f"memory budget must be positive, not {memory_budget}")

    def fits(factory: str) -> bool:
        return memory_budget is None or index_bytes(factory, n, dim) <= memory_budget

    flat_bytes = n * dim * 4
    if n <= exact.EXACT_LIMIT and fits("Flat"):
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
    index = trained(factory, vectors, ids, dim=dim, seed=seed)
    add_rows(index, vectors, ids, 0, len(ids))
    return index


def trained(factory: str, vectors: Any, ids: np.ndarray, *, dim: int, seed: int = 0) -> faiss.Index:
    """The empty index `build` fills: made from factory and, if it needs it, trained on the
    seeded sample of vectors (n, dim) that `build` trains on."""
    try:
        inner = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ValueError("FAISS cannot parse this factory string (try Flat, IVF1024,Flat, "
                         "IVF1024,PQ64 or HNSW32)") from e  # fmt: skip
    index = inner if holds_ids(inner) else faiss.IndexIDMap(inner)
    if not index.is_trained:
        lists = _list_count(factory)
        if len(ids) < max(lists, 1):
            raise ValueError(
                f"it needs at least {max(lists, 1):,} vectors to train on and there are "
                f"{len(ids):,}; choose fewer lists or --auto"
            )
        sample = training_size(factory, len(ids)) or len(ids)
        rows = np.random.default_rng(seed).choice(len(ids), size=sample, replace=False)
        index.train(as_float32(vectors[np.sort(rows)], dim))
    return index


def add_rows(index: faiss.Index, vectors: Any, ids: np.ndarray, start: int, stop: int) -> None:
    """Add vectors[start:stop] (float32 rows of index.d) keyed by ids[start:stop], in chunks."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    for first in range(start, stop, CHUNK):
        last = min(first + CHUNK, stop)
        index.add_with_ids(as_float32(vectors[first:last], index.d), ids[first:last])


def merge_lists(into: faiss.Index, part: faiss.Index) -> None:
    """Append the inverted lists of part to those of into: two IVF indexes made from the same
    trained index, each holding its own ids. Adding two row ranges to two copies and merging
    them leaves every list as adding both ranges, in order, to one index would."""
    ivf(into).merge_from(ivf(part), 0)
    into.ntotal = ivf(into).ntotal


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
        values = np.einsum("qcd,qd->qc", vectors[positions[block]], queries[block])
        # Ids no longer stored score NaN: they, like missing candidates, never place.
        values[(candidates[block] < 0) | np.isnan(values)] = -np.inf
        by_id = np.argsort(candidates[block], axis=1, kind="stable")  # ties go to the smaller id
        best, best_scores = exact.top_k(np.take_along_axis(values, by_id, axis=1), k)
        best_ids = np.take_along_axis(np.take_along_axis(candidates[block], by_id, axis=1), best, 1)
        placed = np.isfinite(best_scores)
        take = best.shape[1]
        scores[block, :take] = np.where(placed, best_scores, -np.inf)
        found[block, :take] = np.where(placed, best_ids, -1)
    return scores, found
