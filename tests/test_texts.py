"""Texts in a collection (add-texts) and image-to-text (describe)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import write_photos

from index.collection import Collection, default_dir
from retrieval.errors import QueryError, RetrievalError
from retrieval.indexer import index_folder
from retrieval.search import Searcher
from retrieval.texts import add_texts, read_texts
from retrieval.vocabulary import class_names, templates_for


@pytest.fixture
def root(tmp_path: Path, encoder, monkeypatch) -> Path:
    monkeypatch.setenv("RETRIEVAL_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "photos"
    write_photos(folder, ["a.jpg", "b.jpg", "c.jpg"])
    index_folder(folder, model=encoder.identity, encoder=encoder)
    return folder


class CountingEncoder:
    """The real encoder, counting the texts it embeds."""

    def __init__(self, encoder):
        self.encoder, self.texts = encoder, 0

    def __getattr__(self, name):
        return getattr(self.encoder, name)

    def encode_texts(self, texts):
        self.texts += len(texts)
        return self.encoder.encode_texts(texts)


def test_the_same_text_is_never_embedded_twice(root, encoder):
    counting = CountingEncoder(encoder)
    first = add_texts(["a cat", "a dog", "a cat", "  "], collection_dir=default_dir(root),
                      encoder=counting, batch_size=1)  # fmt: skip
    assert (first.added, first.known, first.total, counting.texts) == (2, 0, 2, 2)
    second = add_texts(["a dog", "a bird"], collection_dir=default_dir(root), encoder=counting)
    assert (second.added, second.known, counting.texts) == (1, 1, 3)
    with Collection.open(default_dir(root), readonly=True) as collection:
        ids, vectors, _ = collection.vectors("text")
        texts = collection.catalog.texts_by_ids(ids)
    assert sorted(texts.values()) == ["a bird", "a cat", "a dog"]
    for text_id, vector in zip(ids.tolist(), vectors, strict=True):
        assert float(vector @ encoder.encode_texts([texts[text_id]])[0]) > 0.999


def test_describe_ranks_the_collection_texts_like_brute_force(root, encoder):
    texts = [f"a photo number {i}" for i in range(30)]
    add_texts(texts, collection_dir=default_dir(root), encoder=encoder)
    image = root / "b.jpg"
    with Searcher.open(default_dir(root), encoder=encoder) as searcher:
        hits = searcher.describe(image, k=5)
        query = searcher.encode_image_files([image])[0]
    scores = encoder.encode_texts(texts) @ query
    expected = np.sort(scores)[::-1][:5]
    assert np.allclose([h.score for h in hits], expected, atol=2e-3)
    for hit in hits:
        assert hit.score == pytest.approx(scores[texts.index(hit.text)], abs=2e-3)
        assert hit.id is not None


def test_describe_without_texts_ranks_imagenet_classes_and_caches_them(root, encoder, monkeypatch):
    image = root / "a.jpg"
    with Searcher.open(default_dir(root), encoder=encoder) as searcher:
        hits = searcher.describe(image, k=5)
        query = searcher.encode_image_files([image])[0]

    # Reference: zero-shot class embeddings, each the normalised mean over its templates.
    names = class_names()
    templates = templates_for(encoder)
    assert len(names) == 1000
    prompts = encoder.encode_texts([t.format(n) for n in names for t in templates])
    means = prompts.reshape(len(names), len(templates), -1).mean(axis=1)
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    scores = means @ query
    assert [h.text for h in hits] == [names[i] for i in np.argsort(-scores, kind="stable")[:5]]
    assert all(h.id is None for h in hits)

    def no_more_text_encoding(texts):
        raise AssertionError("the vocabulary must come from the cache")

    monkeypatch.setattr(encoder, "encode_texts", no_more_text_encoding)
    with Searcher.open(default_dir(root), encoder=encoder) as searcher:
        assert [h.text for h in searcher.describe(image, k=5)] == [h.text for h in hits]


def test_describe_from_texts_needs_texts(root, encoder):
    with (
        Searcher.open(default_dir(root), encoder=encoder) as searcher,
        pytest.raises(QueryError, match="add-texts"),
    ):
        searcher.describe(root / "a.jpg", source="texts")


def test_read_texts_from_lines_csv_and_tsv(tmp_path: Path):
    (tmp_path / "t.txt").write_text("a cat\n\n  a dog  \n", encoding="utf-8")
    assert read_texts(tmp_path / "t.txt") == ["a cat", "a dog"]
    (tmp_path / "t.csv").write_text('id,Caption\n1,a red car\n2,\n3,"a, comma"\n')
    assert read_texts(tmp_path / "t.csv") == ["a red car", "a, comma"]
    (tmp_path / "t.tsv").write_text("label\tother\nsun\tx\nmoon\ty\n")
    assert read_texts(tmp_path / "t.tsv", column="other") == ["x", "y"]
    with pytest.raises(RetrievalError, match=r"t\.csv: no column text"):
        read_texts(tmp_path / "t.csv", column="text")
    with pytest.raises(RetrievalError, match="no such file"):
        read_texts(tmp_path / "missing.txt")
