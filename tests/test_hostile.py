"""Hostile file systems: names that are not UTF-8, FIFOs and devices posing as photos, dangling
links and link loops, files that read on past their size; and the CLI's answers to bad options.

The indexer runs in a subprocess with a timeout wherever today's failure would be a hang.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import photo, write_photos

from index.atomic import write_bytes_atomic
from index.collection import default_dir
from retrieval.errors import ImageReadError, RetrievalError
from retrieval.images import read_image_file
from retrieval.indexer import index_folder
from retrieval.info import collection_info
from retrieval.names import printable
from retrieval.scan import ScanProblem, scan
from retrieval.search import Searcher

RETRIEVAL = Path(sys.executable).parent / "retrieval"
NOT_UTF8 = os.fsdecode(b"caf\xe9 \xff.jpg")  # Latin-1 bytes, as an old camera card may hold
NOT_UTF8_SHOWN = "caf\\xe9 \\xff.jpg"


def cli(*args: str, cwd: Path | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "RETRIEVAL_INDEX"}
    environment["HF_HUB_OFFLINE"] = "1"
    return subprocess.run(
        [str(RETRIEVAL), *args], cwd=cwd, env=environment, capture_output=True, timeout=timeout
    )


def stored_names(root: Path) -> dict[bytes, str]:
    """path bytes -> status, read from the catalog file with SQLite alone."""
    db = sqlite3.connect(default_dir(root) / "catalog.sqlite")
    try:
        rows = db.execute("SELECT CAST(path AS BLOB), status FROM items").fetchall()
    finally:
        db.close()
    return {bytes(path): status for path, status in rows}


# -- names ----------------------------------------------------------------------------------------


def test_a_name_that_is_not_utf8_is_indexed_and_stored_byte_for_byte(tmp_path, encoder):
    root = tmp_path / "photos"
    write_photos(root, ["a.jpg", "ünï/b.jpg"])
    photo(7).save(root / NOT_UTF8)

    report = index_folder(root, model=encoder.identity, encoder=encoder)

    assert (report.added, report.skipped) == (3, [])
    # The catalog holds each name's own bytes: UTF-8 names exactly as before, the other as is.
    assert stored_names(root) == {
        b"a.jpg": "ok",
        "ünï/b.jpg".encode(): "ok",
        b"caf\xe9 \xff.jpg": "ok",
    }
    with Searcher.open(default_dir(root), encoder=encoder) as searcher:
        items = searcher.collection.catalog.items()
        (item,) = [i for i in items if os.fsencode(i.path) == b"caf\xe9 \xff.jpg"]
        hits = searcher.search_vector(searcher.item_vector(item.id), k=3)
    (hit,) = [h for h in hits if h.id == item.id]
    assert os.fsencode(hit.path) == os.fsencode(root) + b"/caf\xe9 \xff.jpg"
    assert hit.path.is_file()
    again = index_folder(root, encoder=encoder)
    assert (again.unchanged, again.added, again.encoded) == (3, 0, 0)


def test_printable_escapes_what_would_mislead_a_reader_and_nothing_else():
    cases = {
        "plain.jpg": "plain.jpg",
        "ünïcödé 🐈.jpg": "ünïcödé 🐈.jpg",
        "Screenshot at 10.00\u202fAM.png": "Screenshot at 10.00\u202fAM.png",  # macOS names
        os.fsdecode(b"\xff.jpg"): "\\xff.jpg",
        "two\nlines.jpg": "two\\nlines.jpg",
        "tab\t.jpg": "tab\\t.jpg",
        "\x1b[31mred.jpg": "\\x1b[31mred.jpg",
        "evil\u202egpj.exe": "evil\\u202egpj.exe",
        "back\\slash.jpg": "back\\\\slash.jpg",
        "\u0085": "\\u0085",
        os.fsdecode(b"\x85"): "\\x85",
    }
    for name, shown in cases.items():
        assert printable(name) == shown, name


# -- what is read, and how much -------------------------------------------------------------------


def test_only_regular_files_are_read(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    os.symlink("/dev/zero", tmp_path / "zero.jpg")
    (tmp_path / "real.jpg").write_bytes(b"12345")
    assert read_image_file(tmp_path / "real.jpg") == b"12345"
    for name, kind in [("pipe.jpg", "FIFO"), ("zero.jpg", "character device")]:
        with pytest.raises(ImageReadError) as caught:
            read_image_file(tmp_path / name, name)
        assert caught.value.reason == f"not a regular file: {kind}"


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux's /proc")
def test_a_file_is_read_no_further_than_its_size(tmp_path):
    # /proc files are regular files of size 0 that read on and on: the read stops at 0 bytes.
    status = Path("/proc/self/status")
    assert status.stat().st_size == 0 and status.read_bytes()
    os.symlink(status, tmp_path / "status.jpg")
    assert read_image_file(tmp_path / "status.jpg") == b""


# -- the scan's problems --------------------------------------------------------------------------


def test_dangling_links_and_link_loops_are_named_for_what_they_are(tmp_path):
    write_photos(tmp_path, ["a/pic.jpg"])
    os.symlink(tmp_path / "gone.jpg", tmp_path / "dangling.jpg")
    os.symlink("self.jpg", tmp_path / "self.jpg")
    os.symlink(tmp_path, tmp_path / "a" / "up")  # a folder loop
    problems: list[ScanProblem] = []
    assert [f.path for f in scan(tmp_path, problems=problems)] == ["a/pic.jpg"]
    assert {p.path: p.error for p in problems} == {
        "a/up": "link loop: leads back to .",
        "dangling.jpg": "dangling link: its target does not exist",
        "self.jpg": "link loop: a symbolic link that leads back to itself",
    }


def test_scan_problems_are_recorded_for_info_once(tmp_path, encoder):
    root = tmp_path / "photos"
    write_photos(root, ["a.jpg", "b.jpg"])
    os.symlink(root / "gone.jpg", root / "dangling.jpg")
    os.symlink("self.jpg", root / "self.jpg")
    first = index_folder(root, model=encoder.identity, encoder=encoder)
    expected = {
        "dangling.jpg": "dangling link: its target does not exist",
        "self.jpg": "link loop: a symbolic link that leads back to itself",
    }
    assert {s.path: s.error for s in first.skipped if s.new} == expected
    info = collection_info(default_dir(root))
    assert {s.path: s.error for s in info.skipped} == expected
    assert {s["path"] for s in info.to_dict()["skipped"]} == set(expected)

    second = index_folder(root, encoder=encoder)
    assert {s.path for s in second.skipped} == set(expected)
    assert not any(s.new for s in second.skipped)
    (root / "dangling.jpg").unlink()
    photo(3).save(root / "dangling.jpg")  # mended: indexed, and no longer listed
    third = index_folder(root, encoder=encoder)
    assert third.added == 1
    assert {s.path for s in collection_info(default_dir(root)).skipped} == {"self.jpg"}


def test_a_folder_that_cannot_be_read_keeps_what_it_held(tmp_path, encoder, monkeypatch):
    root = tmp_path / "photos"
    write_photos(root, ["a.jpg", "nas/b.jpg", "nas/c.jpg"])
    index_folder(root, model=encoder.identity, encoder=encoder)
    # Tests may run as root, whom chmod 000 does not stop: refuse the folder as the OS would.
    real_scandir = os.scandir

    def scandir(path):
        if Path(path).name == "nas":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    report = index_folder(root, encoder=encoder)
    assert report.removed == 0
    assert [(s.path, s.error) for s in report.skipped] == [
        ("nas", "cannot read folder (Permission denied)")
    ]
    assert collection_info(default_dir(root)).images == 3


# -- atomic writes --------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_atomic_writes_get_the_mode_the_umask_gives(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_bytes_atomic(tmp_path / "atomic", b"x")
        (tmp_path / "plain").write_bytes(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "atomic").stat().st_mode) == 0o666 & ~umask
    assert (tmp_path / "atomic").stat().st_mode == (tmp_path / "plain").stat().st_mode


def test_every_file_of_a_collection_has_the_same_mode(tmp_path, encoder):
    root = tmp_path / "photos"
    write_photos(root, ["a.jpg"])
    old = os.umask(0o022)
    try:
        index_folder(root, model=encoder.identity, encoder=encoder)
    finally:
        os.umask(old)
    directory = default_dir(root)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir() if p.is_file()}
    assert modes["manifest.json"] == modes["index.faiss"] == modes["catalog.sqlite"] == 0o644


# -- the CLI on a hostile folder ------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, tiny_model) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("hostile") / "photos"
    write_photos(root, ["a.jpg", "b.png"])
    photo(5).save(root / NOT_UTF8)
    photo(6).save(root / "two\nlines.jpg")
    (root / "c:thumbs_up:.jpg").write_text("not an image")
    os.mkfifo(root / "pipe.jpg")  # opened for reading, it waits for a writer for ever
    os.symlink("/dev/zero", root / "zero.jpg")  # read to the end, it never ends
    process = cli("index", str(root), "--model", tiny_model.name, "--json")
    return root, process


def test_a_fifo_and_a_link_to_a_device_are_skipped_not_read(hostile):
    root, process = hostile
    assert process.returncode == 0, process.stderr
    summary = json.loads(process.stdout)
    skipped = {s["path"]: s["error"] for s in summary["skipped"]}
    assert skipped["pipe.jpg"] == "not a regular file: FIFO"
    assert skipped["zero.jpg"] == "not a regular file: character device"
    assert summary["added"] == 4
    info = json.loads(cli("info", "--json", "--index", str(default_dir(root))).stdout)
    assert {s["path"] for s in info["skipped"]} == {"pipe.jpg", "zero.jpg", "c:thumbs_up:.jpg"}


def test_user_text_in_messages_is_printed_literally(hostile):
    _, process = hostile
    stderr = process.stderr.decode()
    assert "skipped c:thumbs_up:.jpg: not an image" in stderr
    assert "\N{THUMBS UP SIGN}" not in stderr


def test_search_output_escapes_names_and_null_mode_prints_them_exactly(hostile, tiny_model):
    root, _ = hostile
    index = str(default_dir(root))
    everything = ("search", "anything", "-k", "10", "--index", index)
    exact = cli(*everything, "-0")
    assert exact.returncode == 0, exact.stderr
    names = exact.stdout.split(b"\0")
    assert names[-1] == b""
    expected = {"a.jpg", "b.png", NOT_UTF8, "two\nlines.jpg"}
    assert sorted(names[:-1]) == sorted(os.fsencode(root / name) for name in expected)

    lines = cli(*everything, "--paths")
    assert lines.returncode == 0, lines.stderr
    shown = lines.stdout.decode().splitlines()
    escaped = ["a.jpg", "b.png", NOT_UTF8_SHOWN, "two\\nlines.jpg"]
    assert sorted(shown) == sorted(f"{root}/{name}" for name in escaped)
    assert "2 of the paths are shown escaped" in lines.stderr.decode()
    assert "-0" in lines.stderr.decode()

    table = cli(*everything, "--json")
    assert table.returncode == 0, table.stderr
    paths = {json.loads(line)["path"] for line in table.stdout.decode().splitlines()}
    assert f"{root}/{NOT_UTF8_SHOWN}" in paths


# -- options --------------------------------------------------------------------------------------


def assert_usage_error(process: subprocess.CompletedProcess, message: str = "") -> None:
    stderr = process.stderr.decode()
    assert process.returncode == 2, stderr
    assert "Traceback" not in stderr
    assert message in " ".join(stderr.replace("\u2502", " ").split())


def test_options_out_of_range_are_usage_errors(hostile, tmp_path):
    root, _ = hostile
    index = ("--index", str(default_dir(root)))
    assert_usage_error(cli("search", "x", "-k", "99999999999999999999", *index), "-k")
    assert_usage_error(cli("describe", str(root / "a.jpg"), "-k", "99999999999999999999", *index))
    assert_usage_error(cli("search", "x", "--min-score", "1.5", *index), "--min-score")
    assert_usage_error(cli("search", "x", "--min-score", "-2", *index), "--min-score")
    assert_usage_error(cli("bench", "synthetic:5", "--split", "bogus", cwd=tmp_path), "bogus")
    assert_usage_error(
        cli("search", "x", "--device", "bogus", *index),
        "unknown device 'bogus'; use auto, cpu or cuda",
    )


def test_train_out_naming_a_file_is_a_one_line_error(tmp_path):
    (tmp_path / "model").write_text("my notes")
    process = cli("train", "synthetic:4", "--out", str(tmp_path / "model"), "--steps", "1")
    stderr = process.stderr.decode()
    assert process.returncode == 1, stderr
    assert [line for line in stderr.splitlines() if line.strip()] == [
        f"error: --out {tmp_path / 'model'} is a file, not a folder; name a new or existing folder"
    ]
    assert (tmp_path / "model").read_text() == "my notes"


def test_decode_gpu_without_cuda_creates_no_collection(tmp_path, tiny_model, encoder):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    write_photos(tmp_path / "p", ["a.jpg"])
    process = cli("index", str(tmp_path / "p"), "--model", tiny_model.name, "--decode", "gpu")
    assert process.returncode == 1, process.stderr
    assert b"--decode gpu needs the torch backend on a CUDA device" in process.stderr
    assert not (tmp_path / "p" / ".retrieval").exists()
    # With a torch encoder on the CPU in hand: refused the same way, still before creating.
    with pytest.raises(RetrievalError, match="--decode gpu needs the torch backend"):
        index_folder(tmp_path / "p", model=encoder.identity, encoder=encoder, decode="gpu")
    assert not (tmp_path / "p" / ".retrieval").exists()
