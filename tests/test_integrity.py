"""A damaged collection is never silently wrong: `check` finds the damage, `check --repair`
plus `index` gives back the undamaged collection, and storage failures are one line."""

from __future__ import annotations

import errno
import json
import os
import sqlite3

import numpy as np
import pytest
from integrity_helpers import (
    assert_same_state,
    assert_search_is_brute_force,
    copy_of,
    make_pristine,
    state,
)
from test_cli import assert_one_line_error, cli

from index.collection import Collection, default_dir
from index.database import Database
from index.errors import CorruptCollection, ModelMismatch, StorageError
from retrieval.indexer import index_folder
from retrieval.search import Searcher, parse_query
from retrieval.upkeep import check_collection, reindex


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, encoder):
    return make_pristine(tmp_path_factory.mktemp("pristine"), encoder)


@pytest.fixture(scope="module")
def expected(pristine):
    return state(pristine)


@pytest.fixture
def root(pristine, tmp_path):
    return copy_of(pristine, tmp_path)


def damage_rows(root, rows, value):
    """Overwrite embedding rows in place with value (0, nan, inf)."""
    with Collection.open(default_dir(root), readonly=True) as collection:
        store = collection.store
        mapped = np.memmap(
            store.path, dtype=store.dtype, mode="r+", shape=(store.rows(), store.dim)
        )
        mapped[rows] = value
        mapped.flush()
        del mapped


def rows_of(root, paths):
    with Collection.open(default_dir(root), readonly=True) as collection:
        return [i.row for i in collection.catalog.items() if i.path in paths]


def repair_and_reindex(root, encoder, expected, encoded):
    first = check_collection(default_dir(root))
    assert first.problems and not first.ok
    repaired = check_collection(default_dir(root), repair=True)
    assert repaired.repaired and repaired.ok
    report = index_folder(root, encoder=encoder, batch_size=4)
    assert report.encoded == encoded  # exactly the damaged ones
    assert check_collection(default_dir(root)).problems == []
    assert_same_state(state(root), expected)
    assert_search_is_brute_force(root, expected)


def test_healthy_collection_checks_ok(root):
    process = cli("check", "--index", str(default_dir(root)))
    assert process.returncode == 0, process.stderr
    assert process.stdout.strip() == "ok"


def test_lost_manifest_is_rebuilt_from_the_catalog_and_another_model_refused(
    root, encoder, other_model, tiny_model, expected
):
    (default_dir(root) / "manifest.json").unlink()
    with pytest.raises(ModelMismatch, match="local-dir"):
        index_folder(root, model=other_model, encoder=None, device="cpu")
    process = cli("index", str(root), "--model", other_model.name, "--device", "cpu")
    assert_one_line_error(process, tiny_model.name)
    assert not (default_dir(root) / "manifest.json").exists()  # refused before writing
    report = index_folder(root, encoder=encoder)
    assert (report.encoded, report.unchanged) == (0, len(expected) - 1)
    manifest = json.loads((default_dir(root) / "manifest.json").read_text())
    assert (manifest["model"]["name"], manifest["dim"]) == (tiny_model.name, encoder.dim)
    assert_search_is_brute_force(root, expected)


def test_an_edited_dim_is_one_line_pointing_at_check_repair(root, expected):
    path = default_dir(root) / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["dim"] = manifest["dim"] // 2
    path.write_text(json.dumps(manifest))
    process = cli("search", "cat", "--index", str(default_dir(root)))
    assert_one_line_error(process, "manifest.json", "dim", "retrieval check --repair")
    process = cli("check", "--repair", "--index", str(default_dir(root)))
    assert process.returncode == 0, process.stderr
    assert "dim" in process.stdout
    assert json.loads(path.read_text())["dim"] == manifest["dim"] * 2
    assert_search_is_brute_force(root, expected)


def test_truncated_embeddings_are_found_and_only_the_lost_rows_encoded_again(
    root, encoder, expected
):
    with Collection.open(default_dir(root), readonly=True) as collection:
        store = collection.store
    os.truncate(store.path, 7 * store.row_bytes)
    process = cli("search", "cat", "--index", str(default_dir(root)))
    assert_one_line_error(process, "retrieval check --repair")
    repair_and_reindex(root, encoder, expected, encoded=12 - 7)


def test_zeroed_rows_are_found_and_only_they_are_encoded_again(root, encoder, expected):
    damage_rows(root, rows_of(root, {"d0/p02.png", "d1/p05.png"}), 0)
    repair_and_reindex(root, encoder, expected, encoded=2)


def test_a_non_finite_row_is_never_returned_and_check_reports_it(root, encoder, expected):
    (row,) = rows_of(root, {"d1/p03.png"})
    damage_rows(root, [row], np.nan)
    others = {p: v for p, v in expected.items() if p != "d1/p03.png"}
    assert_search_is_brute_force(root, others)  # no traceback, the damaged one left out
    report = check_collection(default_dir(root))
    assert any("not finite" in p.message for p in report.problems)
    damage_rows(root, [row], np.inf)
    assert_search_is_brute_force(root, others)
    repair_and_reindex(root, encoder, expected, encoded=1)


def test_a_faiss_index_missing_ids_is_found_and_rebuilt(root, expected):
    import faiss

    path = default_dir(root) / "index.faiss"
    index = faiss.read_index(str(path))
    index.remove_ids(np.array([1, 2], dtype=np.int64))
    faiss.write_index(index, str(path))
    mtime = path.stat().st_mtime_ns
    os.utime(path, ns=(mtime, mtime))
    report = check_collection(default_dir(root))
    assert [p.part for p in report.problems] == ["faiss"]
    assert check_collection(default_dir(root), repair=True).ok
    assert faiss.read_index(str(path)).ntotal == len(expected) - 1
    assert check_collection(default_dir(root)).problems == []


def test_orphan_thumbnails_are_dropped_and_others_kept(root, expected):
    folder = default_dir(root) / "thumbnails"
    digest = next(v[1] for v in expected.values() if v[0] == "ok")
    kept = folder / digest[:2] / f"{digest}-320.jpg"
    orphan = folder / "de" / "deadbeef-320.jpg"
    for path in (kept, orphan):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"jpeg")
    process = cli("check", "--index", str(default_dir(root)))
    assert process.returncode == 1
    assert "thumbnails" in process.stdout
    assert check_collection(default_dir(root), repair=True).ok
    assert kept.exists() and not orphan.exists()


def test_an_overflowing_query_weight_is_one_line(root):
    process = cli("search", "1e39:cat", "--index", str(default_dir(root)))
    assert_one_line_error(process, "1e39", "too large")


def test_a_skipped_file_rewritten_with_the_same_size_and_mtime_is_read_again(root, encoder):
    good = root / "d0/p00.png"
    fixed = root / "late.png"
    data = good.read_bytes()
    fixed.write_bytes(b"\0" * 16 + data[16:])  # same size, not a PNG
    before = index_folder(root, encoder=encoder)
    assert "late.png" in {s.path for s in before.skipped}
    stat = fixed.stat()
    fixed.write_bytes(data)
    os.utime(fixed, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # a new ctime, the old mtime
    assert fixed.stat().st_size == stat.st_size
    after = index_folder(root, encoder=encoder)
    assert (after.added, after.encoded + after.updated) == (1, after.updated)
    assert "late.png" not in {s.path for s in after.skipped}


@pytest.mark.skipif(os.geteuid() == 0, reason="permissions do not stop root from reading")
def test_a_file_skipped_as_unreadable_is_read_after_chmod(root, encoder):
    path = root / "d0/p00.png"
    (root / "new.png").write_bytes(path.read_bytes()[:-1] + b"\1")
    os.chmod(root / "new.png", 0)
    assert "new.png" in {s.path for s in index_folder(root, encoder=encoder).skipped}
    os.chmod(root / "new.png", 0o644)
    assert "new.png" not in {s.path for s in index_folder(root, encoder=encoder).skipped}


def test_disk_full_writing_embeddings_is_one_error_and_loses_nothing(
    root, encoder, expected, monkeypatch
):
    from conftest import write_photos

    write_photos(root, ["new/a.png", "new/b.png"], first_seed=100)

    real = os.pwrite

    def full(fd, data, offset):
        if len(data) < 64:  # the lock file's pid
            return real(fd, data, offset)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(StorageError, match=r"embeddings\.bin.*No space left"):
        index_folder(root, encoder=encoder)
    monkeypatch.undo()
    assert_same_state(state(root), expected)
    assert index_folder(root, encoder=encoder).added == 2


def test_disk_full_in_the_catalog_is_one_error_and_loses_nothing(
    root, encoder, expected, monkeypatch
):
    from conftest import write_photos

    write_photos(root, ["new/a.png"], first_seed=100)
    real = Database.execute

    def full(self, sql, parameters=()):
        if sql.startswith("INSERT INTO items"):
            self.connection.execute("SELECT 1")  # the connection stays usable
            from index.database import storage_error

            raise storage_error(self.path, sqlite3.OperationalError("database or disk is full"))
        return real(self, sql, parameters)

    monkeypatch.setattr(Database, "execute", full)
    with pytest.raises(StorageError, match=r"catalog\.sqlite: the disk is full"):
        index_folder(root, encoder=encoder)
    monkeypatch.undo()
    assert_same_state(state(root), expected)


def test_a_faiss_write_failure_in_reindex_is_one_error_and_keeps_the_index(root, monkeypatch):
    import faiss

    path = default_dir(root) / "index.faiss"
    before = path.read_bytes()

    def full(index, name):
        raise RuntimeError("Error in faiss::FileIOWriter: No space left on device")

    monkeypatch.setattr(faiss, "write_index", full)
    with pytest.raises(StorageError, match=r"index\.faiss.*No space left"):
        reindex(default_dir(root), factory="Flat")
    assert path.read_bytes() == before


@pytest.mark.parametrize("where", ["header", "middle"])
def test_random_bytes_in_the_catalog_are_one_line(root, where):
    path = default_dir(root) / "catalog.sqlite"
    for leftover in default_dir(root).glob("catalog.sqlite-*"):
        leftover.unlink()
    data = bytearray(path.read_bytes())
    start = 0 if where == "header" else 4096
    data[start : start + 4096] = np.random.default_rng(0).bytes(4096)
    path.write_bytes(bytes(data))
    for args in (["info"], ["search", "cat"], ["check"]):
        process = cli(*args, "--index", str(default_dir(root)))
        assert process.returncode == 1, (args, process.stderr)
        assert "Traceback" not in process.stderr
        assert "catalog.sqlite" in process.stderr + process.stdout


def test_an_index_option_naming_a_file_or_an_unwritable_place_is_one_line(
    root, tmp_path, tiny_model
):
    afile = tmp_path / "afile"
    afile.write_text("x")
    model = ["--model", tiny_model.name]
    process = cli("index", str(root), "--index", str(afile), *model)
    assert_one_line_error(process, "afile", "not a folder")
    process = cli("index", str(root), "--index", str(afile / "below"), *model)
    assert_one_line_error(process, "afile", "not a folder")


def test_search_of_a_damaged_collection_says_to_repair(root):
    path = default_dir(root) / "manifest.json"
    path.write_text("{not json")
    with pytest.raises(CorruptCollection, match="check --repair"):
        Searcher.open(default_dir(root)).search(parse_query(["x"]))
