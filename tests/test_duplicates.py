"""Near-duplicate groups from the stored embeddings: checked against an all-pairs numpy reference
with a naive connected-components loop, and against hand-written expectations."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import deque
from pathlib import Path

import numpy as np
import pytest
from conftest import photo, write_photos
from fastapi.testclient import TestClient

import retrieval.encoders
from index.catalog import Item
from index.collection import Collection, NewImage, default_dir
from index.manifest import ModelIdentity
from index.neighbours import close_pairs
from retrieval.duplicates import find_duplicates, rank_key
from retrieval.indexer import index_folder
from retrieval.web import create_app

CLI = Path(__file__).resolve().parent.parent / "cli.py"
DIM = 32


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def planted(n: int, seed: int = 0) -> np.ndarray:
    """n random unit vectors, where every fifth one starts a run of two to four near copies
    (the base plus noise), so that groups of several sizes and cosines are present."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, DIM))
    row = 0
    while row < n:
        run = int(rng.integers(2, 5))
        for offset in range(1, run):
            if row + offset < n:
                noise = rng.uniform(0.05, 0.6)
                vectors[row + offset] = vectors[row] + noise * rng.standard_normal(DIM)
        row += 5
    return unit(vectors)


def make_collection(
    directory: Path,
    files: list[tuple[str, int, int, int, str]],
    vectors: np.ndarray,
    model: ModelIdentity | None = None,
) -> Path:
    """A collection whose catalog holds these (path, size, width, height, hash) files with
    these vectors, written through the catalog as the indexer writes them."""
    root = directory / "photos"
    root.mkdir(parents=True, exist_ok=True)
    collection = Collection.create(default_dir(root), root=root, model=model or ModelIdentity("m"),
                                   dim=vectors.shape[1], embedding_dtype="float32")  # fmt: skip
    images = [
        NewImage(path, size, 1, digest, width, height)
        for path, size, width, height, digest in files
    ]
    with collection.locked():
        collection.append_images(vectors, images)
    collection.close()
    return root


def reference_groups(paths: list[str], vectors: np.ndarray, threshold: float) -> set[frozenset]:
    """All-pairs cosine in numpy, then connected components by a breadth-first walk."""
    close = (vectors @ vectors.T) >= threshold
    seen, groups = set(), set()
    for start in range(len(paths)):
        if start in seen:
            continue
        component, queue = {start}, deque([start])
        while queue:
            here = queue.popleft()
            for other in np.flatnonzero(close[here]):
                if int(other) not in component:
                    component.add(int(other))
                    queue.append(int(other))
        seen |= component
        if len(component) > 1:
            groups.add(frozenset(paths[i] for i in component))
    return groups


def found_groups(groups, root: Path) -> set[frozenset]:
    return {frozenset(f.path.relative_to(root).as_posix() for f in g.files) for g in groups}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(CLI.parent), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(CLI), *args], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip


@pytest.fixture
def album(tmp_path: Path) -> Path:
    """A small hand-made collection: three groups (one across folders) and two loners."""
    files = [
        ("trip/a.jpg", 2_000_000, 4000, 3000, "h1"),
        ("trip/a.cr2", 25_000_000, 4000, 3000, "h2"),  # RAW at the same size: it is best
        ("trip/a-small.jpg", 300_000, 1000, 750, "h3"),
        ("trip/b.png", 900_000, 1200, 800, "h4"),  # larger PNG before the smaller JPEG
        ("home/b-copy.jpg", 950_000, 600, 400, "h5"),
        ("home/c.jpg", 500_000, 800, 600, "h6"),
        ("home/c-copy.jpg", 500_000, 800, 600, "h6"),  # same bytes: grouped by hash
        ("home/lone.jpg", 400_000, 800, 600, "h7"),
        ("trip/lone.jpg", 400_000, 800, 600, "h8"),
    ]
    rng = np.random.default_rng(5)
    a, b, c, lone1, lone2 = unit(rng.standard_normal((5, DIM)))
    near = lambda v, s: unit((v + s * rng.standard_normal(DIM))[None])[0]  # noqa: E731
    vectors = np.stack([a, near(a, 0.03), near(a, 0.03), b, near(b, 0.03), c, c, lone1, lone2])
    return make_collection(tmp_path, files, vectors)


def test_exact_copies_group_by_hash_even_with_a_threshold_of_one(tmp_path, encoder):
    root = tmp_path / "photos"
    write_photos(root, ["a.jpg", "b.png", "c.jpg"])
    (root / "sub").mkdir()
    shutil.copyfile(root / "a.jpg", root / "sub" / "a-copy.jpg")
    photo(0).resize((48, 36)).save(root / "a-half.jpg", quality=92)  # similar, not identical
    index_folder(root, model=encoder.identity, encoder=encoder, batch_size=8)
    groups = find_duplicates(default_dir(root), threshold=1.0)
    assert found_groups(groups, root) == {frozenset({"a.jpg", "sub/a-copy.jpg"})}
    assert groups[0].score == pytest.approx(1.0, abs=1e-6)


def test_grouping_equals_brute_force_on_planted_near_duplicates(tmp_path):
    vectors = planted(400)
    paths = [f"f{i // 100}/{i:04d}.jpg" for i in range(len(vectors))]
    files = [(p, 1000, 10, 10, f"hash{i}") for i, p in enumerate(paths)]
    root = make_collection(tmp_path, files, vectors)
    for threshold in (0.6, 0.8, 0.9, 0.95):
        expected = reference_groups(paths, vectors, threshold)
        assert len(expected) > 5
        got = find_duplicates(default_dir(root), threshold=threshold)
        assert found_groups(got, root) == expected
        for group in got:  # the score is the lowest cosine within the group
            rows = [paths.index(f.path.relative_to(root).as_posix()) for f in group.files]
            lowest = (vectors[rows] @ vectors[rows].T).min()
            assert group.score == pytest.approx(min(1.0, lowest), abs=1e-5)


def test_the_inverted_file_search_finds_the_same_close_pairs_as_brute_force():
    vectors = planted(3000, seed=3)
    scores = vectors @ vectors.T
    first, second = np.nonzero(np.triu(scores >= 0.85, k=1))
    pairs = close_pairs(vectors, 0.85, exact_limit=0)
    assert set(zip(pairs.first.tolist(), pairs.second.tolist(), strict=True)) == set(
        zip(first.tolist(), second.tolist(), strict=True)
    )
    assert np.allclose(pairs.score, scores[pairs.first, pairs.second], atol=1e-5)


def test_best_comes_first_by_pixels_then_format_then_size_then_path():
    def item(path: str, size: int, width: int, height: int) -> Item:
        return Item(0, path, size, 1, "h", width, height, "ok", None, 0)

    files = [
        item("small.jpg", 5_000_000, 1000, 750),
        item("big.jpg", 900_000, 2000, 1500),
        item("big.png", 800_000, 2000, 1500),
        item("big.cr2", 700_000, 2000, 1500),
        item("big-heavier.jpg", 950_000, 2000, 1500),
        item("twin-b.jpg", 900_000, 2000, 1500),
        item("unknown.jpg", 9_000_000, None, None),
    ]
    ordered = [i.path for i in sorted(files, key=rank_key)]
    assert ordered == [
        "big.cr2",  # RAW first at the same pixel count, even as the smallest file
        "big.png",  # then lossless
        "big-heavier.jpg",  # then the larger file
        "big.jpg",  # then the path
        "twin-b.jpg",
        "small.jpg",  # fewer pixels, whatever its size
        "unknown.jpg",
    ]


def test_groups_list_their_best_file_first(album):
    groups = find_duplicates(default_dir(album))
    best = {g.files[0].path.relative_to(album).as_posix(): g for g in groups}
    assert set(best) == {"trip/a.cr2", "trip/b.png", "home/c-copy.jpg"}
    a = best["trip/a.cr2"]
    assert [f.path.name for f in a.files] == ["a.cr2", "a.jpg", "a-small.jpg"]
    assert [f.best for f in a.files] == [True, False, False]
    assert (a.files[0].size, a.files[0].width, a.files[0].height) == (25_000_000, 4000, 3000)
    assert [f.path.name for f in best["trip/b.png"].files] == ["b.png", "b-copy.jpg"]


def test_paths_prints_exactly_the_files_that_are_not_their_groups_best(album):
    result = run_cli("duplicates", "--paths", "--index", str(default_dir(album)))
    assert result.returncode == 0, result.stderr
    expected = {"trip/a.jpg", "trip/a-small.jpg", "home/b-copy.jpg", "home/c.jpg"}
    assert sorted(result.stdout.splitlines()) == sorted(str(album / p) for p in expected)


def test_json_prints_one_object_per_group_with_its_files(album):
    result = run_cli("duplicates", "--json", "--index", str(default_dir(album)))
    assert result.returncode == 0, result.stderr
    groups = [json.loads(line) for line in result.stdout.splitlines()]
    assert [g["group"] for g in groups] == [1, 2, 3]
    by_best = {Path(g["files"][0]["path"]).name: g for g in groups}
    assert by_best["c-copy.jpg"]["score"] == pytest.approx(1.0, abs=1e-6)
    second = {"path": str(album / "trip/a.jpg"), "size": 2_000_000, "width": 4000, "height": 3000,
              "best": False}  # fmt: skip
    assert by_best["a.cr2"]["files"][1] == second
    assert all(0.9 <= g["score"] <= 1.0 for g in groups)


def test_under_keeps_only_files_in_that_folder(album):
    groups = find_duplicates(default_dir(album), under=album / "trip")
    assert found_groups(groups, album) == {
        frozenset({"trip/a.jpg", "trip/a.cr2", "trip/a-small.jpg"})
    }
    result = run_cli("duplicates", "--under", str(album / "elsewhere" / ".."), "--paths",
                     "--index", str(default_dir(album)))  # fmt: skip
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 4
    outside = run_cli("duplicates", "--under", "/", "--index", str(default_dir(album)))
    assert outside.returncode == 1
    assert outside.stderr.startswith("error: --under /: not inside the indexed folder")


def test_a_raw_and_jpeg_of_the_same_name_group_a_little_below_the_threshold(tmp_path):
    rng = np.random.default_rng(9)
    base = unit(rng.standard_normal((1, DIM)))[0]
    # a cosine of about 0.88: below the 0.9 threshold, above it less the same-name slack
    other = unit((base + 0.53 * unit(rng.standard_normal((1, DIM)))[0])[None])[0]
    assert 0.86 < float(base @ other) < 0.9
    files = [("x/p.nef", 9, 20, 10, "r1"), ("x/p.jpg", 5, 20, 10, "r2"),
             ("x/q.jpg", 5, 20, 10, "r3"), ("y/p.jpg", 5, 20, 10, "r4")]  # fmt: skip
    root = make_collection(tmp_path, files, np.stack([base, other, other, other]))
    # q.jpg shares no name with p.nef, y/p.jpg no folder; the three JPEGs match each other exactly
    groups = found_groups(find_duplicates(default_dir(root), threshold=0.9), root)
    assert groups == {frozenset({"x/p.nef", "x/p.jpg", "x/q.jpg", "y/p.jpg"})}
    groups = found_groups(find_duplicates(default_dir(root), threshold=0.999), root)
    assert groups == {frozenset({"x/p.jpg", "x/q.jpg", "y/p.jpg"})}


def test_no_encoder_is_loaded_and_torch_is_never_imported(album, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("duplicates must not load a model")

    monkeypatch.setattr(retrieval.encoders, "load_encoder", refuse)
    assert len(find_duplicates(default_dir(album))) == 3
    code = (
        "import sys; from retrieval.duplicates import find_duplicates; "
        f"assert len(find_duplicates({str(default_dir(album))!r})) == 3; "
        "assert not {'torch', 'open_clip'} & set(sys.modules), 'a model library was imported'"
    )
    env = {**os.environ, "PYTHONPATH": str(CLI.parent)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


def test_a_threshold_outside_minus_one_to_one_is_refused_in_one_line(album):
    result = run_cli("duplicates", "--threshold", "1.5", "--index", str(default_dir(album)))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: --threshold 1.5: give a cosine between -1 and 1, like 0.9"
    ]


def test_the_web_view_lists_groups_with_ids_sizes_and_the_best_marked(tmp_path, encoder):
    dim = int(encoder.encode_texts(["x"]).shape[1])
    padded = unit(np.pad(planted(60, seed=4), ((0, 0), (0, dim - DIM))))
    paths = [f"{'a' if i < 30 else 'b'}/{i:03d}.jpg" for i in range(60)]
    files = [(p, 1000 + i, 10 + i, 10, f"h{i}") for i, p in enumerate(paths)]
    root = make_collection(tmp_path, files, padded, model=encoder.identity)
    client = TestClient(create_app(default_dir(root), encoder=encoder))
    answer = client.get("/api/duplicates", params={"threshold": 0.8}).json()
    expected = reference_groups(paths, padded, 0.8)
    assert answer["groups_total"] == len(expected)
    assert {frozenset(f["path"] for f in g["files"]) for g in answer["groups"]} == expected
    for group in answer["groups"]:
        sizes = [f["width"] * f["height"] for f in group["files"]]
        assert sizes == sorted(sizes, reverse=True)
        assert [f["best"] for f in group["files"]] == [True] + [False] * (len(sizes) - 1)
        first = group["files"][0]
        assert client.get(f"/api/items/{first['id']}").json()["path"] == first["path"]
    inside = client.get("/api/duplicates", params={"threshold": 0.8, "folder": "b", "limit": 1})
    assert inside.json()["groups_total"] == len(reference_groups(paths[30:], padded[30:], 0.8))
    assert len(inside.json()["groups"]) == 1
    assert client.get("/api/duplicates", params={"folder": "../x"}).status_code == 400
    assert client.get("/api/duplicates", params={"threshold": 2}).status_code == 422


def test_the_page_offers_the_duplicates_view_from_its_own_files(tmp_path, encoder):
    dim = int(encoder.encode_texts(["x"]).shape[1])
    vectors = unit(np.random.default_rng(1).standard_normal((2, dim)))
    root = make_collection(tmp_path, [("a.jpg", 1, 1, 1, "h1"), ("b.jpg", 1, 1, 1, "h2")], vectors,
                           model=encoder.identity)  # fmt: skip
    client = TestClient(create_app(default_dir(root), encoder=encoder))
    page = client.get("/").text
    assert 'id="show-duplicates"' in page and 'id="duplicates"' in page
    for asset in ("/static/duplicates.js", "/static/duplicates.css"):
        assert asset in page
        answer = client.get(asset)
        assert answer.status_code == 200
        assert "http" not in answer.text and "import(" not in answer.text
    assert "/api/duplicates?" in client.get("/static/duplicates.js").text
