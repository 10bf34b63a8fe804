"""Near-duplicates: groups of files that show the same picture, from the stored embeddings alone.

Two files belong together when they have the same content hash (exact copies), or when their
embeddings' cosine is at least the threshold (resized, recompressed, lightly edited copies and
burst frames), or when they share a folder and a name but not an extension (a RAW and the
camera's JPEG) and their cosine is at least the threshold less SAME_NAME_SLACK. Groups are the
connected components of those pairs. No image is decoded and no model is loaded; nothing is
ever deleted.
"""

from __future__ import annotations

import posixpath
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from index.catalog import Item
from index.collection import Collection, resolve_dir
from index.neighbours import close_pairs

from .errors import QueryError
from .folders import under_prefix
from .raw import RAW_EXTENSIONS

DEFAULT_THRESHOLD = 0.96
"""Cosine at which two files count as the same picture: the highest at which nearly every copy
(recompressed, resized, cropped, colour-shifted) was found by benchmarks/duplicates.py."""

SAME_NAME_SLACK = 0.05
"""How much lower the cosine of a RAW+JPEG-like pair (same folder and name) may be: a camera's
JPEG and a demosaic of its RAW differ in tone curve and sharpening more than copies do."""

LOSSLESS = frozenset({".png", ".tif", ".tiff", ".bmp"})


@dataclass(frozen=True)
class DuplicateFile:
    """One file of a group: its catalog id, absolute path, size in bytes and pixel size."""

    id: int
    path: Path
    size: int
    width: int | None
    height: int | None
    best: bool


@dataclass(frozen=True)
class DuplicateGroup:
    """Files showing the same picture, best first. score: the lowest cosine between any two of
    them (1.0 for exact copies)."""

    number: int
    score: float
    files: list[DuplicateFile]


def find_duplicates(
    collection_dir: Path | None = None,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    under: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[DuplicateGroup]:
    """The groups of near-duplicates in a collection (default: the nearest one above the current
    folder), ordered by their best file's path.

    under: only files in this folder (absolute, or relative to the current folder or the root).
    progress(done, total) follows the range search over the stored embeddings.
    """
    directory = resolve_dir(collection_dir)
    with Collection.open(directory, readonly=True) as collection:
        prefix = None if under is None else under_prefix(collection.root, under)
        return duplicate_groups(collection, threshold=threshold, prefix=prefix, progress=progress)


def duplicate_groups(
    collection: Collection,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    prefix: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[DuplicateGroup]:
    """find_duplicates() on an open collection; prefix: a folder relative to the root (POSIX)."""
    if not -1.0 <= threshold <= 1.0:
        raise QueryError(f"--threshold {threshold}: give a cosine between -1 and 1, like 0.9")
    catalog = collection.catalog
    with catalog.snapshot():
        ids, vectors, _version = collection.stored()
        items = {i.id: i for i in catalog.items() if i.status == "ok"}
        if prefix:
            wanted = np.asarray(catalog.ids_under(prefix), dtype=np.int64)
            keep = np.flatnonzero(np.isin(ids, wanted))
            ids, vectors = ids[keep], vectors[keep]
    pairs = close_pairs(vectors, threshold, progress=progress)
    links = [(pairs.first, pairs.second)]
    links += _same_content(ids, items), _same_name(ids, items, vectors, threshold - SAME_NAME_SLACK)
    components = _components(len(ids), links)
    root = collection.root
    # One read of every grouped row (a memory-mapped read per group costs more than its maths).
    grouped = vectors[np.concatenate(components)] if components else None
    groups, start = [], 0
    for members in components:
        score = _lowest_cosine(grouped[start : start + len(members)])
        start += len(members)
        files = _best_first([items[int(ids[m])] for m in members], root)
        groups.append((files[0].path, score, files))
    groups.sort(key=lambda g: str(g[0]))
    return [DuplicateGroup(n, score, files) for n, (_, score, files) in enumerate(groups, 1)]


def rank_key(item: Item) -> tuple[int, int, int, str]:
    """Sorts the best copy first: most pixels, then the original format (RAW, then lossless,
    then JPEG and the other lossy formats), then the larger file, then the path."""
    suffix = posixpath.splitext(item.path)[1].lower()
    kind = 0 if suffix in RAW_EXTENSIONS else 1 if suffix in LOSSLESS else 2
    return (-(item.width or 0) * (item.height or 0), kind, -item.size, item.path)


def _best_first(items: list[Item], root: Path) -> list[DuplicateFile]:
    ordered = sorted(items, key=rank_key)
    return [
        DuplicateFile(i.id, root / i.path, i.size, i.width, i.height, best=n == 0)
        for n, i in enumerate(ordered)
    ]


def _same_content(ids: np.ndarray, items: dict[int, Item]) -> tuple[np.ndarray, np.ndarray]:
    """Rows with the same content hash, each linked to the first row with that hash."""
    return _link_keys(ids, items, lambda item: item.hash)


def _same_name(
    ids: np.ndarray, items: dict[int, Item], vectors: object, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Rows in the same folder with the same name but another extension whose cosine is at
    least threshold."""
    first, second = _link_keys(ids, items, lambda item: posixpath.splitext(item.path)[0])
    if not len(first):
        return first, second
    a, b = vectors[first], vectors[second]  # type: ignore[index]
    agree = np.einsum("ij,ij->i", a, b) >= threshold
    return first[agree], second[agree]


def _link_keys(
    ids: np.ndarray, items: dict[int, Item], key: Callable[[Item], str | None]
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, rows) linking each row to the first earlier row with the same key."""
    seen: dict[str, int] = {}
    first, second = [], []
    for row, item_id in enumerate(ids.tolist()):
        value = key(items[item_id])
        if value is None:
            continue
        earlier = seen.setdefault(value, row)
        if earlier != row:
            first.append(earlier)
            second.append(row)
    return np.asarray(first, dtype=np.int64), np.asarray(second, dtype=np.int64)


def _components(n: int, links: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """The connected components of n rows that hold at least two rows, each sorted
    (union-find with path halving)."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for first, second in links:
        for a, b in zip(first.tolist(), second.tolist(), strict=True):
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    members: dict[int, list[int]] = defaultdict(list)
    linked = {int(r) for pair in links for part in pair for r in part.tolist()}
    for row in sorted(linked):
        members[find(row)].append(row)
    return [np.asarray(rows, dtype=np.int64) for rows in members.values() if len(rows) > 1]


def _lowest_cosine(vectors: np.ndarray) -> float:
    """The lowest cosine between any two of these L2-normalised rows (n, d), at most 1; in
    blocks of rows, so that a large group costs no n x n matrix."""
    lowest = 1.0
    for start in range(0, len(vectors), 1024):
        lowest = min(lowest, float((vectors[start : start + 1024] @ vectors.T).min()))
    return lowest
