"""A run killed at any point, then run again, ends where an uninterrupted run ends."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import write_photos

from index.collection import Collection, default_dir
from index.manifest import Manifest
from index.vectors import EmbeddingStore
from retrieval.indexer import index_folder
from retrieval.search import Searcher, parse_query

NAMES = [f"dir{i % 3}/photo{i:02d}.jpg" for i in range(20)] + ["bad.jpg"]


def make_root(folder: Path) -> Path:
    write_photos(folder, NAMES[:-1])
    (folder / "bad.jpg").write_text("not an image")
    return folder


def state(root: Path) -> dict[str, tuple]:
    """Everything a run leaves that matters: per path, its status, hash, error and vector."""
    with Collection.open(default_dir(root), readonly=True) as collection:
        items = collection.catalog.items()
        vectors = {
            i.path: collection.store.read([i.row])[0] if i.row is not None else None for i in items
        }
    return {i.path: (i.status, i.hash, i.error, i.size, vectors[i.path]) for i in items}


def assert_same_state(got: dict, expected: dict):
    assert got.keys() == expected.keys()
    for path, (status, digest, error, size, vector) in expected.items():
        other = got[path]
        assert other[:4] == (status, digest, error, size), path
        if vector is None:
            assert other[4] is None
        else:  # batches of another size may round the last float16 bit differently
            np.testing.assert_allclose(other[4], vector, atol=2e-3)


@pytest.fixture
def reference(tmp_path: Path, encoder) -> dict:
    root = make_root(tmp_path / "reference")
    index_folder(root, model=encoder.identity, encoder=encoder, batch_size=3)
    return state(root)


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from retrieval.indexer import index_folder
    from retrieval.encoders.identity import model_identity

    root, model, how = sys.argv[1], sys.argv[2], sys.argv[3]
    commits = 0

    def progress(event):
        global commits
        if event.phase == "encode":
            commits += 1
            if commits == 3:
                os.kill(os.getpid(), signal.SIGKILL if how == "kill" else signal.SIGINT)

    index_folder(root, model=model_identity(model), device="cpu", batch_size=3, workers=2,
                 progress=progress)
    """
)


@pytest.mark.parametrize("how", ["kill", "interrupt"])
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, encoder, reference, how):
    root = make_root(tmp_path / "photos")
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    process = subprocess.run(
        [sys.executable, str(script), str(root), encoder.identity.name, how],
        capture_output=True,
        text=True,
        timeout=120,
    )
    expected_code = -signal.SIGKILL if how == "kill" else -signal.SIGINT
    assert process.returncode == expected_code, process.stderr
    partial = state(root)
    committed = sum(1 for v in partial.values() if v[0] == "ok")
    assert 0 < committed < 20

    if how == "interrupt":  # Ctrl-C leaves the saved FAISS index in step with the catalog
        with Collection.open(default_dir(root), readonly=True) as collection:
            manifest = Manifest.read(collection.dir / "manifest.json")
            assert manifest.index_version == collection.catalog.version

    # Searching the half-built collection works and sees exactly what was committed.
    with Searcher.open(default_dir(root), encoder=encoder) as searcher:
        assert len(searcher.search(parse_query(["x"]), k=100)) == committed

    report = index_folder(root, encoder=encoder, batch_size=3)
    assert report.encoded == 20 - committed  # nothing committed is encoded twice
    assert_same_state(state(root), reference)


def test_crash_between_writing_vectors_and_committing_loses_only_that_batch(
    tmp_path, encoder, reference, monkeypatch
):
    root = make_root(tmp_path / "photos")
    real_write = EmbeddingStore.write
    calls = {"n": 0}

    def write_then_die(self, first_row, vectors):
        real_write(self, first_row, vectors)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the vectors are on disk, the catalog rows are not

    monkeypatch.setattr(EmbeddingStore, "write", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        index_folder(root, model=encoder.identity, encoder=encoder, batch_size=3)
    monkeypatch.setattr(EmbeddingStore, "write", real_write)
    assert sum(1 for v in state(root).values() if v[0] == "ok") == 3

    report = index_folder(root, encoder=encoder, batch_size=3)
    assert report.encoded == 17
    assert_same_state(state(root), reference)


def test_a_stale_faiss_index_is_rebuilt_from_the_stored_embeddings(tmp_path, encoder):
    root = make_root(tmp_path / "photos")
    index_folder(root, model=encoder.identity, encoder=encoder)
    saved = default_dir(root) / "index.faiss"
    stale = tmp_path / "stale.faiss"
    shutil.copy(saved, stale)
    (root / "dir0" / "photo00.jpg").unlink()
    index_folder(root, encoder=encoder)
    shutil.copy(stale, saved)  # as if the process died before saving the new index
    os.utime(saved)

    with Searcher.open(default_dir(root), encoder=encoder) as searcher:
        hits = searcher.search(parse_query(["x"]), k=100)
    assert len(hits) == 19
    assert all(h.path.name != "photo00.jpg" or h.path.parent.name != "dir0" for h in hits)
