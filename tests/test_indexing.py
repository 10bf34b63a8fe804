"""Indexing a folder: incremental updates, renames, bad files, locks and model identity."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import photo, write_photos

from index.catalog import Catalog
from index.collection import Collection, default_dir
from index.errors import CollectionLocked, CollectionTooNew, CorruptCollection, ModelMismatch
from index.manifest import MANIFEST_VERSION
from retrieval import collection_model
from retrieval import indexer as indexer_module
from retrieval.indexer import index_folder
from retrieval.info import collection_info


def stored(root: Path) -> dict[str, np.ndarray]:
    """path -> stored embedding, read straight from the collection's files."""
    with Collection.open(default_dir(root), readonly=True) as collection:
        ids, vectors, _ = collection.vectors()
        items = collection.catalog.by_ids(ids)
        return {items[i].path: v for i, v in zip(ids.tolist(), vectors, strict=True)}


def embed_file(encoder, path: Path) -> np.ndarray:
    from retrieval.images import load_image

    image = load_image(path, min_size=encoder.min_side)
    return encoder.encode_images(encoder.prepare(image)[None])[0]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    write_photos(folder, ["a.jpg", "b.png", "sub/c.jpg", "sub/d.webp", "e f ü.jpg"])
    return folder


def run(root: Path, encoder, **kwargs):
    return index_folder(root, model=encoder.identity, encoder=encoder, batch_size=2, **kwargs)


def test_first_index_embeds_every_image_like_encoding_it_alone(root, encoder):
    report = run(root, encoder)
    assert (report.added, report.encoded, report.updated, report.removed) == (5, 5, 0, 0)
    vectors = stored(root)
    assert sorted(vectors) == ["a.jpg", "b.png", "e f ü.jpg", "sub/c.jpg", "sub/d.webp"]
    for path, vector in vectors.items():
        reference = embed_file(encoder, root / path)
        assert float(vector @ reference) > 0.9999, path


def test_unchanged_root_is_only_stat_ed(root, encoder, monkeypatch):
    run(root, encoder)

    def forbidden(*args, **kwargs):
        raise AssertionError("an unchanged root must not read image data or load a model")

    monkeypatch.setattr(indexer_module, "decode_files", forbidden)
    monkeypatch.setattr(indexer_module, "load_encoder", forbidden)
    monkeypatch.setattr(collection_model, "load_encoder", forbidden)
    report = index_folder(root)
    assert (report.added, report.updated, report.removed, report.unchanged) == (0, 0, 0, 5)


def test_added_modified_and_deleted_files(root, encoder):
    run(root, encoder)
    before = stored(root)
    write_photos(root, ["new.jpg"], first_seed=100)
    photo(200).save(root / "a.jpg", quality=92)  # same name, new content
    (root / "sub" / "d.webp").unlink()

    report = run(root, encoder)
    assert (report.added, report.updated, report.removed, report.encoded) == (1, 1, 1, 2)
    after = stored(root)
    assert sorted(after) == ["a.jpg", "b.png", "e f ü.jpg", "new.jpg", "sub/c.jpg"]
    assert float(after["a.jpg"] @ embed_file(encoder, root / "a.jpg")) > 0.9999
    assert float(after["a.jpg"] @ before["a.jpg"]) < 0.9999
    assert np.array_equal(after["b.png"], before["b.png"])


def test_renamed_and_moved_files_are_not_encoded_again(root, encoder):
    run(root, encoder)
    before = stored(root)
    with Collection.open(default_dir(root), readonly=True) as collection:
        ids_before = {i.path: i.id for i in collection.catalog.items()}
    os.rename(root / "a.jpg", root / "renamed.jpg")
    (root / "elsewhere").mkdir()
    os.rename(root / "sub" / "c.jpg", root / "elsewhere" / "c.jpg")

    report = run(root, encoder)
    assert (report.renamed, report.encoded, report.added, report.removed) == (2, 0, 0, 0)
    after = stored(root)
    assert np.array_equal(after["renamed.jpg"], before["a.jpg"])
    assert np.array_equal(after["elsewhere/c.jpg"], before["sub/c.jpg"])
    with Collection.open(default_dir(root), readonly=True) as collection:
        ids_after = {i.path: i.id for i in collection.catalog.items()}
    assert ids_after["renamed.jpg"] == ids_before["a.jpg"]  # the same item, moved


def test_a_copy_reuses_the_embedding(root, encoder):
    run(root, encoder)
    shutil.copy(root / "b.png", root / "copy of b.png")
    report = run(root, encoder)
    assert (report.added, report.encoded) == (1, 0)
    after = stored(root)
    assert np.array_equal(after["copy of b.png"], after["b.png"])


def test_touched_file_is_not_encoded_again(root, encoder):
    run(root, encoder)
    os.utime(root / "b.png", ns=(1, 1))
    report = run(root, encoder)
    assert (report.encoded, report.updated, report.unchanged) == (0, 0, 5)


def test_bad_files_are_skipped_recorded_and_do_not_stop_the_run(root, encoder):
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("not an image")
    photo(9, size=(200, 200)).save(root / "cut.jpg", quality=95)
    (root / "cut.jpg").write_bytes((root / "cut.jpg").read_bytes()[:1500])

    events = []
    report = run(root, encoder, progress=events.append)
    assert report.added == 5
    skipped = {s.path: s.error for s in report.skipped}
    assert set(skipped) == {"zero.jpg", "text.jpg", "cut.jpg"}
    assert "empty" in skipped["zero.jpg"]
    assert "not an image" in skipped["text.jpg"]
    assert "cannot decode" in skipped["cut.jpg"]
    assert sorted(e.skipped.path for e in events if e.phase == "skip") == sorted(skipped)

    info = collection_info(default_dir(root))
    assert info.images == 5
    assert {s.path: s.error for s in info.skipped} == skipped

    # Unchanged bad files are not retried; a fixed one is indexed.
    photo(10).save(root / "text.jpg", quality=90)
    report = run(root, encoder)
    assert (report.added, report.encoded) == (1, 1)
    assert {s.path for s in report.skipped} == {"zero.jpg", "cut.jpg"}
    assert not any(s.new for s in report.skipped)


def test_a_collection_refuses_another_model(root, encoder, other_model):
    run(root, encoder)
    with pytest.raises(ModelMismatch) as caught:
        index_folder(root, model=other_model)
    message = str(caught.value)
    assert encoder.identity.name in message and other_model.name in message


def test_one_indexer_at_a_time(root, encoder):
    run(root, encoder)
    holder = Collection.open(default_dir(root))
    holder.lock()
    try:
        with pytest.raises(CollectionLocked, match=str(os.getpid())):
            run(root, encoder)
    finally:
        holder.close()
    run(root, encoder)  # the lock is free again


def test_a_collection_belongs_to_its_root(root, encoder, tmp_path):
    from retrieval.errors import RetrievalError

    run(root, encoder, collection_dir=tmp_path / "coll")
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(RetrievalError, match="indexes"):
        run(other, encoder, collection_dir=tmp_path / "coll")


def test_an_old_catalog_row_never_lends_its_id(root, encoder):
    """A replaced file gets a new id, so a stale FAISS index cannot return it by mistake."""
    run(root, encoder)
    with Collection.open(default_dir(root), readonly=True) as collection:
        old_id = {i.path: i.id for i in collection.catalog.items()}["a.jpg"]
    photo(300).save(root / "a.jpg", quality=92)
    run(root, encoder)
    catalog = Catalog(default_dir(root) / "catalog.sqlite", readonly=True)
    assert catalog.get(old_id) is None
    catalog.close()


def test_a_catalog_of_an_older_schema_is_upgraded_on_open(root, encoder):
    import sqlite3

    from index.migrations import MIGRATIONS

    run(root, encoder)
    path = default_dir(root) / "catalog.sqlite"
    columns = "id, path, size, mtime_ns, hash, width, height, status, error, row"
    first = default_dir(root) / "first.sqlite"  # the catalog as the first schema held it
    with sqlite3.connect(first) as db:
        db.executescript(MIGRATIONS[0] + "PRAGMA user_version = 1;")
        db.execute("ATTACH ? AS now", (str(path),))
        db.execute(f"INSERT INTO items SELECT {columns} FROM now.items")
        db.execute("UPDATE meta SET value = (SELECT value FROM now.meta WHERE key = 'next_row') "
                   "WHERE key = 'next_row'")  # fmt: skip
        db.commit()
        db.execute("DETACH now")
    db.close()
    for leftover in default_dir(root).glob("catalog.sqlite-*"):
        leftover.unlink()
    first.replace(path)
    info = collection_info(default_dir(root))  # a read-only command
    assert (info.images, info.texts) == (5, 0)
    assert info.taken is not None and info.taken.unread == 5
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    db.close()


def test_a_manifest_from_a_newer_version_is_refused_not_called_corrupt(root, encoder):
    run(root, encoder)
    path = default_dir(root) / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["version"] = MANIFEST_VERSION + 1
    manifest["a_field_this_version_does_not_know"] = True
    path.write_text(json.dumps(manifest))
    attempts = [
        lambda: Collection.open(default_dir(root), readonly=True),
        lambda: collection_info(default_dir(root)),
        lambda: index_folder(root, encoder=encoder),
    ]
    for attempt in attempts:
        with pytest.raises(CollectionTooNew, match="made by a newer version of retrieval") as e:
            attempt()
        assert "upgrade" in str(e.value) and not isinstance(e.value, CorruptCollection)


def test_reading_a_collections_info_loads_no_ingest_code():
    heavy = ("retrieval.indexer", "retrieval.pipeline", "retrieval.encoders.torch_encoder",
             "retrieval.images", "torch", "open_clip", "PIL", "faiss")  # fmt: skip
    code = f"import sys, retrieval.info; print([m for m in {heavy!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).parents[1], check=True)  # fmt: skip
    assert result.stdout.strip() == "[]"
