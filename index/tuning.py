"""Tuning an index's search depth (nprobe, efSearch) and re-ranking factor to a target recall,
measured against exact search on the collection's own vectors."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import ann
from ._faiss import faiss
from .ann import rerank, search_parameters
from .exact import top_k
from .inspect import depth_parameter, is_compressed, ivf
from .vectors import as_float32

REFINE_FACTORS = (2, 4, 8, 16)
"""Candidates fetched per result (k * factor) before exact re-ranking of a compressed index."""


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
    sample, own = as_float32(vectors[rows], dim), ids[rows]
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
        return as_float32(vectors[order[np.searchsorted(ids, wanted, sorter=order)]], dim)

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
    """The ids (q, k) int64 of each query's k best by inner product, best first; among equal
    scores the earlier row of vectors (the smaller id, as a collection orders them) goes first.

    vectors (n, d) are read CHUNK rows at a time, so a memory-mapped float16 store is never
    converted to float32 all at once.
    """
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(ids), ann.CHUNK):
        block = as_float32(vectors[start : start + ann.CHUNK], queries.shape[1])
        scores = np.concatenate([best_scores, queries @ block.T], axis=1)
        block_ids = np.broadcast_to(ids[start : start + len(block)], (len(queries), len(block)))
        top, best_scores = top_k(scores, k)
        best_ids = np.take_along_axis(np.concatenate([best_ids, block_ids], axis=1), top, axis=1)
    return best_ids


def _stopped_growing(measured: list[tuple[int, float]]) -> bool:
    """Recall grew by less than 0.002 over the last two doublings of the depth."""
    return len(measured) >= 3 and measured[-1][1] - measured[-3][1] < 0.002


def _others(found: np.ndarray, own: int, k: int) -> list[int]:
    """The first k results that are not the query itself."""
    return [int(i) for i in found if i != own and i >= 0][:k]


def _depths(index: faiss.Index, depth: str) -> list[int]:
    if depth == "nprobe":
        lists = ivf(index).nlist
        return [v for v in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if v < lists] + [lists]
    return [16, 32, 64, 128, 256, 512, 1024]


def _latency(search: Callable[[np.ndarray, int], object], queries: np.ndarray) -> float:
    """Milliseconds per query, one query at a time."""
    started = time.perf_counter()
    for query in queries:
        search(query[None, :], 1)
    return 1000 * (time.perf_counter() - started) / max(len(queries), 1)
