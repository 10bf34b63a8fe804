"""Retrieval recall@k exactly as CLIP_benchmark defines it (zero-shot retrieval).

Every caption is a query. Text-to-image recall@k is the share of captions whose own image is
among the k best-scoring images; image-to-text recall@k is the share of images for which at
least one of their captions is among the k best-scoring captions. Scores are inner products of
L2-normalised float32 embeddings. Ties, which real embeddings almost never have, are broken
by dataset order (the earlier image or caption ranks first).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def text_to_image_ranks(
    image_embeddings: np.ndarray,
    text_embeddings: np.ndarray,
    text_image_index: np.ndarray,
    block: int = 1024,
) -> np.ndarray:
    """For each caption, the 0-based rank of its own image among all images: int64 (n_texts,).

    image_embeddings: float32 (n_images, d); text_embeddings: float32 (n_texts, d);
    text_image_index: int64 (n_texts,), the image row of each caption.
    """
    images = np.asarray(image_embeddings, dtype=np.float32)
    texts = np.asarray(text_embeddings, dtype=np.float32)
    targets = np.asarray(text_image_index, dtype=np.int64)
    columns = np.arange(len(images))
    ranks = np.empty(len(texts), dtype=np.int64)
    for start in range(0, len(texts), block):
        scores = texts[start : start + block] @ images.T
        own = targets[start : start + block]
        ranks[start : start + block] = _ranks(scores, own, columns)
    return ranks


def image_to_text_ranks(
    image_embeddings: np.ndarray,
    text_embeddings: np.ndarray,
    text_image_index: np.ndarray,
    block: int = 256,
) -> np.ndarray:
    """For each image, the 0-based rank of its best-ranked caption among all captions:
    int64 (n_images,). Arguments as for text_to_image_ranks."""
    images = np.asarray(image_embeddings, dtype=np.float32)
    texts = np.asarray(text_embeddings, dtype=np.float32)
    owner = np.asarray(text_image_index, dtype=np.int64)
    columns = np.arange(len(texts))
    ranks = np.empty(len(images), dtype=np.int64)
    for start in range(0, len(images), block):
        rows = np.arange(start, min(start + block, len(images)))
        scores = images[rows] @ texts.T
        positive = owner[None, :] == rows[:, None]
        # The best-ranked caption is the best-scoring one (the earliest among equals).
        masked = np.where(positive, scores, -np.inf)
        best = np.argmax(masked, axis=1)
        ranks[rows] = _ranks(scores, best, columns)
    return ranks


def _ranks(scores: np.ndarray, target: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Rank of column target[i] in row i: the better-scoring columns plus equal earlier ones."""
    own = scores[np.arange(len(scores)), target][:, None]
    better = (scores > own).sum(axis=1)
    tied_before = ((scores == own) & (columns[None, :] < target[:, None])).sum(axis=1)
    return better + tied_before


def recall_from_ranks(ranks: np.ndarray, ks: Iterable[int]) -> dict[int, float]:
    """recall@k for each k: the share of queries whose rank is below k."""
    ranks = np.asarray(ranks)
    return {int(k): float(np.count_nonzero(ranks < k)) / len(ranks) for k in ks}


def recall_at_k(
    image_embeddings: np.ndarray,
    text_embeddings: np.ndarray,
    text_image_index: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
) -> tuple[dict[int, float], dict[int, float]]:
    """(text-to-image, image-to-text) recall@k over all scores; see the module docstring."""
    t2i = text_to_image_ranks(image_embeddings, text_embeddings, text_image_index)
    i2t = image_to_text_ranks(image_embeddings, text_embeddings, text_image_index)
    return recall_from_ranks(t2i, ks), recall_from_ranks(i2t, ks)


def ranks_from_neighbours(neighbours: np.ndarray, relevant: Sequence[set[int]] | np.ndarray):
    """Ranks from retrieved lists, as a search index returns them.

    neighbours: int64 (n_queries, K) retrieved item ids, best first (-1 for none).
    relevant: per query, the ids that count as a hit (a set), or one id per query (int64 (n,)).
    Returns int64 (n_queries,): the position of the first hit, or K when there is none.
    """
    neighbours = np.asarray(neighbours)
    if isinstance(relevant, np.ndarray):
        hits = neighbours == relevant[:, None]
    else:
        hits = np.array(
            [
                [int(n) in wanted for n in row]
                for row, wanted in zip(neighbours, relevant, strict=True)
            ]
        )
    first = np.where(hits.any(axis=1), hits.argmax(axis=1), neighbours.shape[1])
    return first.astype(np.int64)
