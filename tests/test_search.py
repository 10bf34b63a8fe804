"""Search against brute force in numpy over the stored embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import write_photos
from reference import brute_force

from index.collection import Collection, default_dir
from index.manifest import Manifest
from retrieval.errors import QueryError
from retrieval.indexer import index_folder
from retrieval.search import QueryTerm, Searcher, parse_query, parse_term

NAMES = [
    f"{folder}/img{i:02d}.jpg" for folder in ("2023", "2023/may", "2024", "20230") for i in range(6)
]


@pytest.fixture
def root(tmp_path: Path, encoder) -> Path:
    folder = tmp_path / "photos"
    write_photos(folder, NAMES)
    index_folder(folder, model=encoder.identity, encoder=encoder, batch_size=8)
    return folder


def assert_matches_brute_force(hits, scores: dict[str, float], root: Path, k: int):
    """Same scores, and a ranking that only differs from brute force within ties."""
    assert len(hits) == min(k, len(scores))
    best = sorted(scores.values(), reverse=True)
    for hit in hits:
        path = hit.path.relative_to(root).as_posix()
        assert hit.score == pytest.approx(scores[path], abs=1e-5)
    got = [hit.score for hit in hits]
    assert got == sorted(got, reverse=True)
    assert np.allclose(got, best[: len(got)], atol=1e-5)
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))


def test_text_search_equals_brute_force(root, encoder):
    with Searcher.open(default_dir(root), encoder=encoder) as searcher:
        for text in ["a red square", "mountains at dawn", "ünïcödé 🐈"]:
            terms = parse_query([text])
            hits = searcher.search(terms, k=7)
            query = encoder.encode_texts([text])[0]
            assert_matches_brute_force(hits, brute_force(root, query), root, 7)


def test_image_search_finds_the_image_itself_first(root, encoder):
    target = root / "2024" / "img03.jpg"
    with Searcher.open(default_dir(root), encoder=encoder) as searcher:
        hits = searcher.search(parse_query(images=[str(target)]), k=5)
        query = searcher.embed([QueryTerm(str(target), "image")])
    assert hits[0].path == target
    assert hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert_matches_brute_force(hits, brute_force(root, query), root, 5)


def test_weighted_and_negative_terms_combine_like_the_vectors(root, encoder):
    image = root / "2023" / "img01.jpg"
    with Searcher.open(default_dir(root), encoder=encoder) as searcher:
        terms = parse_query(["2:a beach", "a dog"], [str(image)], ["0.5:snow"])
        hits = searcher.search(terms, k=24)
        image_vector = searcher.encode_image_files([image])[0]
    texts = encoder.encode_texts(["a beach", "a dog", "snow"])
    expected = 2 * texts[0] + texts[1] + image_vector - 0.5 * texts[2]
    expected /= np.linalg.norm(expected)
    assert_matches_brute_force(hits, brute_force(root, expected), root, 24)


def test_under_filters_by_folder_at_search_time(root, encoder):
    inside = {n for n in NAMES if n.startswith("2023/")}  # not 20230/
    with Searcher.open(default_dir(root), encoder=encoder) as searcher:
        hits = searcher.search(parse_query(["anything"]), k=50, under="2023")
        also = searcher.search(parse_query(["anything"]), k=50, under=root / "2023" / "may")
        none = searcher.search(parse_query(["anything"]), k=5, under="missing-folder")
    query = encoder.encode_texts(["anything"])[0]
    assert {h.path.relative_to(root).as_posix() for h in hits} == inside
    assert_matches_brute_force(hits, brute_force(root, query, inside), root, 50)
    assert {h.path.parent.name for h in also} == {"may"} and len(also) == 6
    assert none == []


def test_under_outside_the_root_is_refused(root, encoder, tmp_path):
    with (
        Searcher.open(default_dir(root), encoder=encoder) as searcher,
        pytest.raises(QueryError, match="not inside"),
    ):
        searcher.search(parse_query(["x"]), under=tmp_path)


def test_min_score_drops_weaker_hits(root, encoder):
    with Searcher.open(default_dir(root), encoder=encoder) as searcher:
        every = searcher.search(parse_query(["a cat"]), k=24)
        threshold = every[5].score
        some = searcher.search(parse_query(["a cat"]), k=24, min_score=threshold)
    assert [h.id for h in some] == [h.id for h in every if h.score >= threshold]


def test_parse_term_reads_weights_and_guesses_kinds(tmp_path):
    picture = tmp_path / "p.jpg"
    write_photos(tmp_path, ["p.jpg"])
    assert parse_term("2:beach", "text") == QueryTerm("beach", "text", 2.0)
    assert parse_term("-0.5:snow", "text") == QueryTerm("snow", "text", -0.5)
    assert parse_term("beach at 5", "text") == QueryTerm("beach at 5", "text", 1.0)
    assert parse_term(str(picture), None, negative=True) == QueryTerm(str(picture), "image", -1.0)
    assert parse_term("night", None, negative=True) == QueryTerm("night", "text", -1.0)
    with pytest.raises(QueryError):
        parse_query([], [], ["only negative"])


def test_searching_while_an_indexer_holds_the_lock_sees_committed_state(root, encoder):
    writer = Collection.open(default_dir(root))
    writer.lock()
    try:
        write_photos(root, ["late.jpg"], first_seed=500)
        with writer.catalog.transaction():  # a batch in flight, not yet committed
            writer.catalog.put_ok("ghost.jpg", 1, 1, "feed", 1, 1, row=0)
            with Searcher.open(default_dir(root), encoder=encoder) as searcher:
                hits = searcher.search(parse_query(images=[str(root / "late.jpg")]), k=30)
        assert len(hits) == len(NAMES)  # neither late.jpg nor ghost.jpg is committed
        assert all(h.path.name != "ghost.jpg" for h in hits)
    finally:
        writer.close()
    index_folder(root, encoder=encoder)
    with Searcher.open(default_dir(root), encoder=encoder) as searcher:
        hits = searcher.search(parse_query(images=[str(root / "late.jpg")]), k=1)
    assert hits[0].path == root / "late.jpg"


def test_a_missing_query_image_is_a_clear_error(root, encoder, tmp_path):
    with Searcher.open(default_dir(root), encoder=encoder) as searcher:
        with pytest.raises(QueryError, match="no such image"):
            searcher.search(parse_query(images=[str(tmp_path / "nope.jpg")]))
        (tmp_path / "bad.jpg").write_text("nope")
        with pytest.raises(QueryError, match=r"bad\.jpg"):
            searcher.search(parse_query(images=[str(tmp_path / "bad.jpg")]))


def test_searching_reads_the_manifest_once_and_never_writes_it(root, monkeypatch):
    path = default_dir(root) / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["weights_hash"] = None  # as in a collection made before the hash was recorded
    path.write_text(json.dumps(manifest))
    before = path.read_bytes()
    reads = []
    real = Manifest.read.__func__

    def counting(cls, where):
        reads.append(where)
        return real(cls, where)

    monkeypatch.setattr(Manifest, "read", classmethod(counting))
    with Searcher.open(default_dir(root), backend="torch", device="cpu") as searcher:
        for text in ["one", "two", "three"]:
            assert len(searcher.search(parse_query([text]), k=3)) == 3
    assert len(reads) == 1  # when the collection was opened
    assert path.read_bytes() == before


def test_a_reader_follows_a_reindex_made_while_it_is_open(root, encoder):
    with Searcher.open(default_dir(root), encoder=encoder) as searcher:
        terms = parse_query(["a red square"])
        exact = searcher.search(terms, k=5)
        with Collection.open(default_dir(root)) as writer, writer.locked():
            writer.reindex("HNSW8")
        assert searcher.collection.manifest.factory == "HNSW8"
        assert [h.id for h in searcher.search(terms, k=5)] == [h.id for h in exact]
