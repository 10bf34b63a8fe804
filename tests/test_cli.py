"""The real `retrieval` command, run in a subprocess as a user's shell would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_photos

REPO = Path(__file__).resolve().parent.parent
RETRIEVAL = Path(sys.executable).parent / "retrieval"


def cli(
    *args: str, cwd: Path | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "RETRIEVAL_INDEX"}
    environment.update({"HF_HUB_OFFLINE": "1", **(env or {})})
    return subprocess.run(
        [str(RETRIEVAL), *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=180,
    )


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def assert_one_line_error(process: subprocess.CompletedProcess, *needles: str) -> None:
    assert process.returncode == 1, process.stderr
    assert "Traceback" not in process.stderr
    lines = [line for line in process.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, process.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tiny_model) -> Path:
    root = tmp_path_factory.mktemp("cli") / "photos"
    write_photos(root, ["a.jpg", "b.png", "trip/c.jpg", "trip/d.jpg"])
    (root / "broken.jpg").write_text("nope")
    process = cli("index", str(root), "--model", tiny_model.name, "--json", "--batch-size", "2")
    assert process.returncode == 0, process.stderr
    summary = json_lines(process.stdout)
    assert len(summary) == 1
    summary = summary[0]
    for field in ("added", "updated", "renamed", "removed", "skipped"):
        assert field in summary
    assert summary["added"] == 4
    (skipped,) = summary["skipped"]
    assert set(skipped) == {"path", "error"}
    assert skipped["path"] == "broken.jpg"
    assert "not an image" in skipped["error"]
    assert "skipped broken.jpg" in process.stderr
    return root


def test_search_json_has_the_promised_fields(indexed):
    process = cli("search", "a photo", "-k", "3", "--json", cwd=indexed / "trip")
    assert process.returncode == 0, process.stderr
    hits = json_lines(process.stdout)
    assert [h["rank"] for h in hits] == [1, 2, 3]
    for hit in hits:
        assert set(hit) >= {"rank", "score", "path", "id"}
        assert Path(hit["path"]).is_absolute() and Path(hit["path"]).exists()


def test_search_by_image_paths_and_table(indexed):
    process = cli("search", "--image", str(indexed / "b.png"), "--paths", cwd=indexed)
    assert process.returncode == 0, process.stderr
    paths = process.stdout.splitlines()
    assert paths[0] == str(indexed / "b.png") and len(paths) == 4

    table = cli("search", "x", "--not", "y", "--under", "trip", "-k", "5", cwd=indexed)
    assert table.returncode == 0, table.stderr
    rows = [line.split() for line in table.stdout.splitlines()]
    assert [r[0] for r in rows] == ["1", "2"]
    assert all(r[2].startswith(str(indexed / "trip")) for r in rows)


def test_info_json(indexed):
    process = cli("info", "--json", "--index", str(indexed / ".retrieval"))
    assert process.returncode == 0, process.stderr
    (info,) = json_lines(process.stdout)
    assert info["images"] == 4
    assert info["model"].startswith("local-dir:")
    assert [s["path"] for s in info["skipped"]] == ["broken.jpg"]
    assert info["bytes_on_disk"] > 0


def test_reindex_builds_another_index_and_info_shows_it(indexed, tmp_path):
    collection = indexed / ".retrieval"
    process = cli("reindex", "--factory", "IVF2,Flat", "--target-recall", "0.9", "--json",
                  "--index", str(collection))  # fmt: skip
    assert process.returncode == 0, process.stderr
    (info,) = json_lines(process.stdout)
    assert info["factory"] == "IVF2,Flat" and info["auto_index"] is False
    assert set(info["search_params"]) == {"nprobe"}
    assert info["tuning"]["recall"] >= 0.9 and info["index_bytes"] > 0
    search = cli("search", "x", "--json", "--index", str(collection))
    assert len(json_lines(search.stdout)) == 4
    bad = cli("reindex", "--factory", "IVF64,Flat", "--index", str(collection))
    assert_one_line_error(bad, "at least 64 vectors")
    back = cli("reindex", "--auto", "--index", str(collection), "--json")
    assert json_lines(back.stdout)[0]["factory"] == "Flat"


def test_the_index_environment_variable_names_the_collection(indexed, tmp_path):
    process = cli(
        "info", "--json", cwd=tmp_path, env={"RETRIEVAL_INDEX": str(indexed / ".retrieval")}
    )
    assert process.returncode == 0, process.stderr
    assert json_lines(process.stdout)[0]["images"] == 4


def test_no_collection_says_how_to_make_one(tmp_path):
    assert_one_line_error(
        cli("search", "a dog", cwd=tmp_path), "no collection found", "retrieval index"
    )


def test_another_model_is_refused_naming_both(indexed, other_model, tiny_model):
    process = cli("index", str(indexed), "--model", other_model.name)
    assert_one_line_error(process, other_model.name, tiny_model.name)


def test_weights_that_cannot_be_had_end_in_one_line(tmp_path):
    (tmp_path / "p").mkdir()
    process = cli(
        "index", str(tmp_path / "p"), "--model", "ViT-B-32", "--pretrained", "laion2b_s34b_b79k"
    )
    assert_one_line_error(process, "ViT-B-32", "laion2b_s34b_b79k", "local-dir:")
    process = cli("index", str(tmp_path / "p"), "--model", f"local-dir:{tmp_path / 'nothing'}")
    assert_one_line_error(process, "nothing", "open_clip_config.json")
    assert not (tmp_path / "p" / ".retrieval").exists()


def test_bad_usage_exits_2(indexed):
    assert cli("search", "x", "-k", "0", cwd=indexed).returncode == 2
    assert cli("index").returncode == 2
    assert cli("frobnicate").returncode == 2


def assert_usage_error(process: subprocess.CompletedProcess, message: str) -> None:
    assert process.returncode == 2, process.stderr
    assert "Traceback" not in process.stderr
    # The message may be wrapped inside a box drawn around it.
    assert message in " ".join(process.stderr.replace("\u2502", " ").split())


def test_a_memory_budget_that_is_not_a_size_is_a_usage_error(indexed):
    process = cli("reindex", "--memory", "lots", cwd=indexed)
    assert_usage_error(process, "--memory lots: give bytes, or a size like 512M or 4G")
    info = cli("info", "--json", cwd=indexed)
    assert json_lines(info.stdout)[0]["images"] == 4


def test_recall_cut_offs_that_are_not_positive_whole_numbers_are_usage_errors(tmp_path):
    process = cli("bench", "synthetic:5", "--k", "1,0", cwd=tmp_path)
    assert_usage_error(process, "--k takes whole numbers of at least 1, like --k 1,5,10")
    process = cli("bench", "synthetic:5", "--k", "one", cwd=tmp_path)
    assert_usage_error(process, "--k takes whole numbers, like --k 1,5,10")


def test_every_command_is_documented_in_the_readme():
    import typer.main

    from cli import app

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    commands = typer.main.get_command(app).commands
    assert commands
    for name in commands:
        assert f"retrieval {name}" in readme, f"README does not document `retrieval {name}`"


def test_float32_embeddings_on_request_and_kept(tmp_path, tiny_model, encoder):
    from reference import brute_force

    root = tmp_path / "photos"
    write_photos(root, ["a.jpg", "b.jpg", "c.png"])
    made = cli("index", str(root), "--model", tiny_model.name, "--embeddings", "float32",
               "--backend", "torch")  # fmt: skip
    assert made.returncode == 0, made.stderr
    collection = root / ".retrieval"
    assert json.loads((collection / "manifest.json").read_text())["embedding_dtype"] == "float32"
    assert (collection / "embeddings.bin").stat().st_size == 3 * encoder.dim * 4
    found = cli("search", "a red square", "--json", "--backend", "torch", cwd=root)
    query = encoder.encode_texts(["a red square"])[0]
    scores = brute_force(root, query)
    for hit in json_lines(found.stdout):
        path = Path(hit["path"]).relative_to(root).as_posix()
        assert hit["score"] == pytest.approx(scores[path], abs=1e-5)
    refused = cli("index", str(root), "--embeddings", "float16")
    assert_one_line_error(refused, "stores float32 embeddings, not float16")
    assert_one_line_error(cli("index", str(root), "--embeddings", "float8"), "float16 or float32")
