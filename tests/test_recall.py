"""Recall@k against a naive loop (ties included) and against CLIP_benchmark's definition."""

from __future__ import annotations

import numpy as np
import pytest
from reference import naive_recall

from retrieval.eval.recall import (
    image_to_text_ranks,
    ranks_from_neighbours,
    recall_at_k,
    recall_from_ranks,
    text_to_image_ranks,
)


def random_dataset(rng, n_images, per_image, dim, levels=None):
    counts = rng.integers(1, per_image + 1, size=n_images)
    owner = np.repeat(np.arange(n_images), counts)
    rng.shuffle(owner)  # captions of one image need not be adjacent
    images = rng.normal(size=(n_images, dim))
    texts = images[owner] + rng.normal(scale=1.5, size=(len(owner), dim))
    if levels:  # coarse values make many exact ties in the scores
        images = np.round(images * levels / 3) / levels
        texts = np.round(texts * levels / 3) / levels
    return images.astype(np.float32), texts.astype(np.float32), owner.astype(np.int64)


@pytest.mark.parametrize("levels", [None, 1, 2])
def test_recall_equals_a_naive_loop_with_several_captions_and_ties(levels):
    rng = np.random.default_rng(levels or 0)
    images, texts, owner = random_dataset(rng, n_images=40, per_image=5, dim=8, levels=levels)
    if levels:
        scores = texts @ images.T
        assert any(len(np.unique(row)) < len(row) for row in scores)  # ties are present
    ks = (1, 2, 5, 10, 40)
    assert recall_at_k(images, texts, owner, ks) == naive_recall(images, texts, owner, ks)


def test_recall_matches_clip_benchmark_definition_to_the_last_digit():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    images, texts, owner = random_dataset(rng, n_images=300, per_image=5, dim=32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    ks = (1, 5, 10)
    t2i, i2t = recall_at_k(images, texts, owner, ks)

    # CLIP_benchmark's zero-shot retrieval, restated: a text x image score matrix, a positive-pair
    # mask, top-k per row, "recall > 0" per query, float32 mean.
    scores = torch.from_numpy(texts) @ torch.from_numpy(images).T
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[torch.arange(len(scores)), torch.from_numpy(owner)] = True

    def clip_recall(s, p, k):
        top = torch.topk(s, k, dim=1).indices
        found = torch.gather(p, 1, top).sum(dim=1)
        return (found > 0).float().mean().item()

    for k in ks:
        assert np.float32(t2i[k]) == np.float32(clip_recall(scores, positive, k))
        assert np.float32(i2t[k]) == np.float32(clip_recall(scores.T, positive.T, k))


def test_ranks_are_computed_in_blocks_like_all_at_once():
    rng = np.random.default_rng(3)
    images, texts, owner = random_dataset(rng, n_images=50, per_image=3, dim=6, levels=2)
    whole = text_to_image_ranks(images, texts, owner, block=10_000)
    assert np.array_equal(text_to_image_ranks(images, texts, owner, block=7), whole)
    whole = image_to_text_ranks(images, texts, owner, block=10_000)
    assert np.array_equal(image_to_text_ranks(images, texts, owner, block=3), whole)


def test_ranks_from_neighbours():
    neighbours = np.array([[4, 2, 9], [1, -1, -1], [7, 8, 3]])
    assert ranks_from_neighbours(neighbours, np.array([2, 5, 7])).tolist() == [1, 3, 0]
    assert ranks_from_neighbours(neighbours, [{9, 1}, {1}, {0}]).tolist() == [2, 0, 3]
    assert recall_from_ranks(np.array([1, 3, 0]), [1, 2]) == {1: 1 / 3, 2: 2 / 3}
