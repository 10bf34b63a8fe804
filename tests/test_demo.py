"""The demonstration's whole path, on a few pictures and one epoch."""

from __future__ import annotations

from retrieval.demo import run_demo
from retrieval.search import Searcher, parse_query


def test_the_demo_trains_indexes_searches_describes_and_benchmarks(tmp_path, monkeypatch):
    monkeypatch.setenv("RETRIEVAL_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    report = run_demo(out, epochs=1, train_spec="synthetic:64", test_spec="synthetic:30")

    assert (out / "model" / "open_clip_config.json").is_file()
    assert (out / "model" / "open_clip_model.safetensors").is_file()
    assert report.indexing.added == 30 and len(list((out / "photos").iterdir())) == 30
    assert len(report.searches) == 3 and all(len(hits) == 3 for _, _, hits in report.searches)
    assert len(report.descriptions) == 2 and all(len(t) == 3 for _, t in report.descriptions)
    assert report.recall is not None and report.recall.images == 30
    # The collection stays usable afterwards, as the README says.
    with Searcher.open(out / "collection") as searcher:
        assert len(searcher.search(parse_query(["a big red star"]), k=5)) == 5
