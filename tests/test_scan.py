"""Scanning a root: recursion, hidden entries, excludes, and symlink loops."""

from __future__ import annotations

import os
from pathlib import Path

from retrieval.scan import ScanProblem, scan


def _touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_scan_finds_images_recursively_and_skips_hidden_and_other_files(tmp_path: Path):
    _touch(
        tmp_path,
        "a.jpg", "B.JPEG", "c.png", "notes.txt", "movie.mp4",
        "sub/d.webp", "sub/deeper/e.heic", ".hidden.jpg", ".cache/f.jpg", "sub/.thumbs/g.jpg",
        "ünïcödé/фото.jpg",
    )  # fmt: skip
    found = sorted(f.path for f in scan(tmp_path))
    assert found == sorted(
        ["a.jpg", "B.JPEG", "c.png", "sub/d.webp", "sub/deeper/e.heic", "ünïcödé/фото.jpg"]
    )


def test_exclude_globs_match_paths_and_names(tmp_path: Path):
    _touch(tmp_path, "keep/a.jpg", "raw/b.jpg", "x/raw/c.jpg", "d_small.jpg", "e.jpg")
    found = sorted(f.path for f in scan(tmp_path, exclude=["raw", "*_small.jpg"]))
    assert found == ["e.jpg", "keep/a.jpg"]


def test_symlink_loops_end_and_linked_folders_are_read_once(tmp_path: Path):
    _touch(tmp_path, "a/pic.jpg")
    os.symlink(tmp_path, tmp_path / "a" / "loop")  # a/loop -> root: a cycle
    os.symlink(tmp_path / "a", tmp_path / "alias")  # the same folder twice
    found = [f.path for f in scan(tmp_path)]
    assert found.count("a/pic.jpg") + found.count("alias/pic.jpg") == 1
    assert len(found) == 1


def test_stat_reports_size_and_mtime(tmp_path: Path):
    _touch(tmp_path, "a.jpg")
    os.utime(tmp_path / "a.jpg", ns=(1_000_000_000, 2_000_000_000))
    (info,) = scan(tmp_path)
    assert info.size == 1 and info.mtime_ns == 2_000_000_000


def test_broken_symlink_is_a_problem_not_a_crash(tmp_path: Path):
    _touch(tmp_path, "ok.jpg")
    os.symlink(tmp_path / "gone.jpg", tmp_path / "dangling.jpg")
    problems: list[ScanProblem] = []
    found = [f.path for f in scan(tmp_path, problems=problems)]
    assert found == ["ok.jpg"]
    assert [p.path for p in problems] == ["dangling.jpg"]
