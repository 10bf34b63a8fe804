"""Capture times and cameras: read from EXIF (with or without an offset) or the file's time,
filtered inside the search, shown by `info`, filled in for collections made before them."""

from __future__ import annotations

import calendar
import os
import sqlite3
import time
from dataclasses import astuple
from pathlib import Path

import numpy as np
import pytest
from conftest import photo
from fastapi.testclient import TestClient
from reference import brute_force
from test_cli import assert_usage_error, cli, json_lines

from index.collection import Collection, default_dir
from index.layout import CATALOG, EMBEDDINGS
from retrieval.dates import period, taken_range
from retrieval.errors import QueryError
from retrieval.indexer import index_folder
from retrieval.info import collection_info
from retrieval.search import Searcher
from retrieval.web import create_app

ZONE = "Asia/Kolkata"  # +05:30 all year: a machine zone that is neither UTC nor a whole hour
LOCAL = 330  # its offset, minutes east of UTC


def utc(*parts: int) -> int:
    return calendar.timegm((*parts, *(0,) * (6 - len(parts))))


# path -> (EXIF DateTimeOriginal, OffsetTimeOriginal, Make, Model, file mtime as UTC epoch s)
PHOTOS = {
    "a.jpg": ("2021:03:05 10:00:00", "+02:00", "Canon", "Canon EOS R5", utc(2024, 5, 1)),
    "b.jpg": ("2023:07:14 18:30:00", None, "NIKON CORPORATION", "NIKON D750", utc(2024, 5, 1)),
    "c.jpg": ("2023:07:31 23:59:59", "-05:00", "FUJIFILM", "X-T4", utc(2024, 5, 1)),
    "trip/d.png": (None, None, None, None, utc(2022, 12, 31, 20)),
    "trip/e.jpg": ("0000:00:00 00:00:00", None, "Google", "Pixel 7", utc(2024, 2, 29, 12)),
}
# What the catalog must hold, worked out by hand: (UTC epoch s, offset minutes, source, camera).
EXPECTED = {
    "a.jpg": (utc(2021, 3, 5, 8), 120, "exif", "Canon EOS R5"),
    "b.jpg": (utc(2023, 7, 14, 13), LOCAL, "exif-local", "NIKON D750"),
    "c.jpg": (utc(2023, 8, 1, 4, 59, 59), -300, "exif", "FUJIFILM X-T4"),
    "trip/d.png": (utc(2022, 12, 31, 20), LOCAL, "mtime", None),
    "trip/e.jpg": (utc(2024, 2, 29, 12), LOCAL, "mtime", "Google Pixel 7"),
}


@pytest.fixture(autouse=True)
def local_zone(monkeypatch):
    monkeypatch.setenv("TZ", ZONE)
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def write_dated_photos(root: Path) -> None:
    for seed, (name, (taken, offset, make, model, mtime)) in enumerate(PHOTOS.items()):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        exif = photo(seed).getexif()
        if make:
            exif[0x010F], exif[0x0110] = make, model
        if taken:
            exif.get_ifd(0x8769)[0x9003] = taken
        if offset:
            exif.get_ifd(0x8769)[0x9011] = offset
        if path.suffix == ".png":
            photo(seed).save(path)
        else:
            photo(seed).save(path, quality=92, exif=exif)
        os.utime(path, (mtime, mtime))


@pytest.fixture
def root(tmp_path: Path, encoder) -> Path:
    folder = tmp_path / "photos"
    write_dated_photos(folder)
    index_folder(folder, model=encoder.identity, encoder=encoder, batch_size=2)
    return folder


def stored_captures(root: Path) -> dict[str, tuple]:
    with Collection.open(default_dir(root), readonly=True) as collection:
        catalog = collection.catalog
        paths = {item.id: item.path for item in catalog.items() if item.status == "ok"}
        captures = catalog.capture_of(paths)
    return {paths[i]: (c.taken, c.offset, c.source, c.camera) for i, c in captures.items()}


def expected_paths(after: int | None, before: int | None, under: str = "") -> set[str]:
    """The photos a date filter must keep, from the hand-worked capture times."""
    return {
        path
        for path, (taken, *_) in EXPECTED.items()
        if (after is None or taken >= after)
        and (before is None or taken < before)
        and path.startswith(under)
    }


def test_capture_times_come_from_exif_with_its_offset_local_time_or_the_file_time(root):
    assert stored_captures(root) == EXPECTED


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("2023", utc(2022, 12, 31, 18, 30), utc(2023, 12, 31, 18, 30)),
        ("2023-07", utc(2023, 6, 30, 18, 30), utc(2023, 7, 31, 18, 30)),
        ("2023-12", utc(2023, 11, 30, 18, 30), utc(2023, 12, 31, 18, 30)),
        ("2024-02-29", utc(2024, 2, 28, 18, 30), utc(2024, 2, 29, 18, 30)),
        ("2023-07-14T18:30", utc(2023, 7, 14, 13), utc(2023, 7, 14, 13)),
        ("2023-07-14 18:30:05", utc(2023, 7, 14, 13, 0, 5), utc(2023, 7, 14, 13, 0, 5)),
        ("2023-07-14T18:30+02:00", utc(2023, 7, 14, 16, 30), utc(2023, 7, 14, 16, 30)),
        ("2023-07-14T18:30Z", utc(2023, 7, 14, 18, 30), utc(2023, 7, 14, 18, 30)),
    ],
)
def test_a_date_names_a_period_in_local_time_and_a_date_with_a_time_an_instant(text, start, end):
    assert period(text) == (start, end)


@pytest.mark.parametrize("text", ["July", "2023-13", "2023-02-30", "23-07-14", "2023/07", ""])
def test_a_bad_date_is_refused_naming_the_value(text):
    with pytest.raises(QueryError, match="--taken-after '" + text):
        taken_range(text, None)


def test_bounds_that_leave_no_time_between_them_are_refused():
    with pytest.raises(QueryError, match="is not before"):
        taken_range("2024", "2023")


FILTERS = [
    ("2023", None, ""),
    (None, "2022", ""),
    ("2023-07", "2023-07", ""),
    ("2023-07-14T18:30", None, ""),
    (None, "2023-07-14T18:30", ""),
    ("2023-07-14T13:00Z", "2024-02-29T12:00:01Z", ""),
    ("2022", "2024", "trip"),
    ("2031", None, ""),
]


@pytest.mark.parametrize(("after", "before", "under"), FILTERS)
def test_date_filters_search_like_brute_force_over_the_photos_taken_then(
    root, after, before, under
):
    allowed = expected_paths(*taken_range(after, before), under=under)
    with Searcher.open(default_dir(root)) as searcher:
        dim = searcher.collection.manifest.dim
        query = np.random.default_rng(7).standard_normal(dim).astype(np.float32)
        query /= np.linalg.norm(query)
        hits = searcher.search_vector(
            query, k=10, taken_after=after, taken_before=before, under=under or None
        )
    scores = brute_force(root, query, allowed)
    got = [hit.path.relative_to(root).as_posix() for hit in hits]
    assert set(got) == allowed
    assert [hit.score for hit in hits] == pytest.approx(sorted(scores.values(), reverse=True))
    for hit, path in zip(hits, got, strict=True):
        assert hit.score == pytest.approx(scores[path], abs=1e-5)


def test_info_shows_the_span_and_where_each_time_came_from(root):
    taken = collection_info(default_dir(root)).to_dict()["taken"]
    assert taken == {
        "earliest": "2021-03-05T10:00:00+02:00",
        "latest": "2024-02-29T17:30:00+05:30",
        "exif": 2,
        "exif-local": 1,
        "mtime": 2,
        "unread": 0,
    }


class CountingEncoder:
    """The test encoder, counting the images it is asked to encode."""

    def __init__(self, encoder) -> None:
        self._encoder = encoder
        self.images = 0

    def __getattr__(self, name: str):
        return getattr(self._encoder, name)

    def encode_images(self, pixels):
        self.images += len(pixels)
        return self._encoder.encode_images(pixels)


def test_a_collection_made_before_capture_times_reads_them_without_encoding(root, encoder):
    directory = default_dir(root)
    # Upgrading an older catalog adds the columns empty: the state every row was left in.
    with sqlite3.connect(directory / CATALOG) as db:
        db.execute("UPDATE items SET taken = NULL, taken_offset = NULL, taken_source = NULL, "
                   "camera = NULL")  # fmt: skip
    assert stored_captures(root) == {}
    assert collection_info(directory).to_dict()["taken"]["unread"] == len(PHOTOS)
    embeddings = (directory / EMBEDDINGS).read_bytes()
    counting = CountingEncoder(encoder)

    report = index_folder(root, encoder=counting)

    assert counting.images == 0 and report.encoded == 0
    assert report.dated == len(PHOTOS)
    assert (directory / EMBEDDINGS).read_bytes() == embeddings
    assert stored_captures(root) == EXPECTED
    assert index_folder(root, encoder=counting).dated == 0


def test_a_copy_found_by_its_content_gets_its_own_capture_time(root, encoder):
    copy = root / "copies" / "a-copy.jpg"
    copy.parent.mkdir()
    copy.write_bytes((root / "a.jpg").read_bytes())
    os.utime(copy, (utc(2025, 1, 1),) * 2)
    report = index_folder(root, encoder=encoder)
    assert report.encoded == 0 and report.dated == 1
    assert stored_captures(root)["copies/a-copy.jpg"] == EXPECTED["a.jpg"]


def test_the_cli_filters_by_date_and_refuses_a_bad_one_naming_it(root):
    env = {"TZ": ZONE}
    dates = ["--taken-after", "2023-07", "--taken-before", "2023-07"]
    found = cli("search", "a photo", *dates, "--json", "--backend", "torch",
                "--index", str(default_dir(root)), env=env)  # fmt: skip
    assert found.returncode == 0, found.stderr
    assert [Path(hit["path"]).name for hit in json_lines(found.stdout)] == ["b.jpg"]
    bad = cli("search", "a photo", "--taken-before", "2023-13", "--index", str(root), env=env)
    assert_usage_error(bad, "'2023-13' is not a valid date")
    info = cli("info", "--index", str(default_dir(root)), env=env)
    assert info.returncode == 0, info.stderr
    assert "taken       2021-03-05T10:00:00+02:00 to 2024-02-29T17:30:00+05:30" in info.stdout


def test_the_web_api_filters_by_date(root, encoder):
    client = TestClient(create_app(default_dir(root), encoder=encoder))
    query = encoder.encode_texts(["a photo"])[0]
    allowed = expected_paths(*taken_range("2023", "2023-07-14"))
    response = client.get("/api/search", params={"q": "a photo", "after": "2023",
                                                 "before": "2023-07-14"})  # fmt: skip
    assert response.status_code == 200, response.text
    scores = brute_force(root, query, allowed)
    assert [hit["path"] for hit in response.json()] == sorted(scores, key=scores.get)[::-1]

    uploaded = client.post(
        "/api/search/image",
        files={"file": ("c.jpg", (root / "c.jpg").read_bytes(), "image/jpeg")},
        data={"after": "2023-07-31T00:00-05:00", "before": ""},
    )
    assert [hit["path"] for hit in uploaded.json()] == ["c.jpg", "trip/e.jpg"]

    ids = {hit["path"]: hit["id"] for hit in client.get("/api/search?q=x&k=10").json()}
    similar = client.get(f"/api/items/{ids['a.jpg']}/similar", params={"before": "2022"})
    assert similar.json() == []

    bad = client.get("/api/search", params={"q": "a photo", "after": "last week"})
    assert bad.status_code == 400
    assert "after 'last week' is not a date" in bad.json()["detail"]


def test_jpegs_left_for_the_device_decoder_carry_their_capture_time_too(tmp_path):
    from retrieval.pipeline import decode_files
    from retrieval.scan import scan

    write_dated_photos(tmp_path)
    results = decode_files(tmp_path, scan(tmp_path), prepare=np.asarray, min_side=None,
                           jpeg_to_device=True)  # fmt: skip
    captures = {}
    for result in results:
        assert (result.jpeg is not None) == result.file.path.endswith(".jpg")
        captures[result.file.path] = astuple(result.capture)
    assert captures == EXPECTED
