"""Compaction drops the embedding rows no item uses, atomically: a kill at any point leaves a
collection whose searches equal brute force over its live items."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
from integrity_helpers import (
    assert_same_state,
    assert_search_is_brute_force,
    copy_of,
    make_pristine,
    state,
)
from test_cli import cli

from index import compaction
from index.catalog import Catalog
from index.collection import Collection, default_dir
from index.errors import CollectionError
from retrieval.indexer import index_folder
from retrieval.search import Searcher
from retrieval.upkeep import check_collection, compact_collection


@pytest.fixture(scope="module")
def thinned(tmp_path_factory, encoder):
    """A collection whose files were half deleted: half its embedding rows are dead."""
    root = make_pristine(tmp_path_factory.mktemp("thinned"), encoder)
    for path in sorted(root.rglob("*.png"))[::2]:
        path.unlink()
    index_folder(root, encoder=encoder)  # far below the automatic minimum: nothing compacted
    return root


@pytest.fixture
def root(thinned, tmp_path):
    return copy_of(thinned, tmp_path)


def file_rows(root) -> int:
    with Collection.open(default_dir(root), readonly=True) as collection:
        return collection.store.rows()


def test_compact_drops_dead_rows_and_orphan_thumbnails_and_keeps_every_vector(root):
    expected = state(root)
    assert file_rows(root) == 12
    orphan = default_dir(root) / "thumbnails" / "de" / "deadbeef-320.jpg"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"jpeg")
    done = compact_collection(default_dir(root))
    assert not orphan.exists()
    assert done.rows == 6 and done.bytes > 0
    assert file_rows(root) == 6
    assert_same_state(state(root), expected)
    assert_search_is_brute_force(root, expected)
    assert check_collection(default_dir(root)).problems == []
    assert sorted(p.name for p in default_dir(root).glob("*embeddings*.bin")) == [
        "embeddings.1.bin"
    ]


def test_an_index_run_compacts_by_itself_past_the_threshold(root, encoder, monkeypatch):
    expected = state(root)
    for path in sorted(root.rglob("*.png"))[:1]:
        path.unlink()
        del expected[path.relative_to(root).as_posix()]
    monkeypatch.setattr(compaction, "MIN_DEAD_ROWS", 4)
    orphan = default_dir(root) / "thumbnails" / "de" / "deadbeef-320.jpg"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"jpeg")
    report = index_folder(root, encoder=encoder)
    assert report.compacted == 7
    assert not orphan.exists()
    assert file_rows(root) == 5
    assert_same_state(state(root), expected)
    assert_search_is_brute_force(root, expected)


def test_the_compact_command(root):
    process = cli("compact", "--index", str(default_dir(root)), "--json")
    assert process.returncode == 0, process.stderr
    assert '"rows": 6' in process.stdout


def test_a_reader_opened_before_compaction_stays_right_after_it(root):
    expected = state(root)
    query = np.ones(next(v[3] for v in expected.values() if v[3] is not None).shape, np.float32)
    query /= np.linalg.norm(query)
    with Searcher.open(default_dir(root)) as searcher:
        before = [(h.id, round(h.score, 4)) for h in searcher.search_vector(query, k=6)]
        item = searcher.collection.catalog.get(before[0][0])
        compact_collection(default_dir(root))
        after = [(h.id, round(h.score, 4)) for h in searcher.search_vector(query, k=6)]
        assert after == before
        np.testing.assert_allclose(searcher.item_vector(item.id), expected[item.path][3], atol=2e-3)


class Killed(Exception):
    pass


def _fault(monkeypatch, point: str) -> None:
    """Make compaction die at one point."""
    if point == "while writing the new file":
        real = compaction.write_rows

        def write(old, live, target):
            real(old, live[: len(live) // 2], target)
            raise Killed

        monkeypatch.setattr(compaction, "write_rows", write)
    elif point == "after writing the new file":
        real_w = compaction.write_rows

        def write_after(old, live, target):
            real_w(old, live, target)
            raise Killed

        monkeypatch.setattr(compaction, "write_rows", write_after)
    elif point == "inside the transaction":

        def move(self, kind, moves, next_row):
            raise Killed

        monkeypatch.setattr(Catalog, "move_rows", move)
    elif point == "after the commit":
        real_set = Catalog.set_meta
        calls = []

        def set_meta(self, key, value):
            real_set(self, key, value)
            calls.append(key)

        monkeypatch.setattr(Catalog, "set_meta", set_meta)
        real_unlink = type(compaction.Path()).unlink

        def unlink(self, missing_ok=False):
            if calls and self.name.startswith("embeddings"):
                raise Killed
            return real_unlink(self, missing_ok=missing_ok)

        monkeypatch.setattr(type(compaction.Path()), "unlink", unlink)


@pytest.mark.parametrize(
    "point",
    [
        "while writing the new file",
        "after writing the new file",
        "inside the transaction",
        "after the commit",
    ],
)
def test_compaction_killed_at_any_point_leaves_a_consistent_collection(root, monkeypatch, point):
    expected = state(root)
    _fault(monkeypatch, point)
    with pytest.raises(Killed):
        compact_collection(default_dir(root))
    monkeypatch.undo()
    assert_same_state(state(root), expected)
    assert_search_is_brute_force(root, expected)
    assert check_collection(default_dir(root), repair=True).ok
    assert check_collection(default_dir(root)).problems == []
    compact_collection(default_dir(root))
    assert file_rows(root) == 6
    assert_same_state(state(root), expected)
    assert_search_is_brute_force(root, expected)


class FullDisk:
    """A file that takes `room` bytes, then fails as a full disk does."""

    def __init__(self, file, room: int) -> None:
        self.file, self.room = file, room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)

    def __enter__(self) -> FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()


@pytest.mark.parametrize("room", [0, 200], ids=["at once", "part way"])
def test_a_full_disk_during_compaction_is_one_error_and_loses_nothing(root, monkeypatch, room):
    expected = state(root)
    monkeypatch.setattr(compaction, "CHUNK", 2)  # several writes, so one can fail part way

    def full_disk_open(path, mode):
        return FullDisk(open(path, mode), room)  # FullDisk closes it

    monkeypatch.setattr(compaction, "open", full_disk_open, raising=False)
    with pytest.raises(CollectionError, match="free some space"):
        compact_collection(default_dir(root))
    monkeypatch.undo()
    assert_same_state(state(root), expected)
    assert_search_is_brute_force(root, expected)
    assert check_collection(default_dir(root)).problems == []
    compact_collection(default_dir(root))
    assert file_rows(root) == 6
    assert_same_state(state(root), expected)
