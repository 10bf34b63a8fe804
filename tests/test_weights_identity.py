"""Weights are identified by their file's bytes, without torch, and old hashes keep working."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_photos

from retrieval.encoders import load_onnx_encoder, onnx_export
from retrieval.encoders.identity import model_identity, weights_hash
from retrieval.encoders.onnx_cache import export_folder
from retrieval.encoders.weights_identity import file_sha256, known_weights_hash

REPO = Path(__file__).resolve().parent.parent
WEIGHTS = "open_clip_model.safetensors"


def folder_of(identity) -> Path:
    return Path(identity.name.removeprefix("local-dir:"))


def test_same_weights_under_another_path_have_the_same_identity(
    tiny_model, other_model, tmp_path
) -> None:
    copy = tmp_path / "elsewhere"
    shutil.copytree(folder_of(tiny_model), copy)
    moved = model_identity(f"local-dir:{copy}")
    assert moved != tiny_model
    assert known_weights_hash(moved) == known_weights_hash(tiny_model)
    assert known_weights_hash(other_model) != known_weights_hash(tiny_model)


def test_file_hash_is_the_files_sha256_and_follows_its_changes(other_model, tmp_path) -> None:
    weights = tmp_path / WEIGHTS
    weights.write_bytes(b"first weights")
    assert file_sha256(weights) == hashlib.sha256(b"first weights").hexdigest()
    other = (folder_of(other_model) / WEIGHTS).read_bytes()
    weights.write_bytes(other)
    os.utime(weights, ns=(1, 1))  # a changed file, whatever the clock's resolution
    assert file_sha256(weights) == hashlib.sha256(other).hexdigest()


def test_replaced_weights_take_the_identity_of_the_new_ones(
    tiny_model, other_model, tmp_path
) -> None:
    copy = tmp_path / "model"
    shutil.copytree(folder_of(tiny_model), copy)
    shutil.copyfile(folder_of(other_model) / WEIGHTS, copy / WEIGHTS)
    os.utime(copy / WEIGHTS, ns=(2, 2))
    assert known_weights_hash(model_identity(f"local-dir:{copy}")) == known_weights_hash(
        other_model
    )


def test_state_dict_hash_from_an_old_manifest_still_finds_its_export(
    tiny_model, encoder, monkeypatch
) -> None:
    old = weights_hash(encoder.model)
    assert old != known_weights_hash(tiny_model)
    first = load_onnx_encoder(tiny_model, precision="fp32", weights_hash=old)
    assert first.folder == export_folder(tiny_model, old)

    def no_export(*args: object) -> None:
        raise AssertionError("the export made under the old hash was not found")

    monkeypatch.setattr(onnx_export, "export", no_export)
    again = load_onnx_encoder(tiny_model, precision="fp32", weights_hash=old)
    assert again.folder == first.folder


def test_a_copied_model_folder_finds_its_export_without_exporting_again(
    tiny_model, tmp_path, monkeypatch
) -> None:
    first = load_onnx_encoder(tiny_model, precision="fp32")
    copy = tmp_path / "elsewhere"
    shutil.copytree(folder_of(tiny_model), copy)
    moved = model_identity(f"local-dir:{copy}")

    def no_export(*args: object) -> None:
        raise AssertionError("the same weights and config under another path were exported again")

    monkeypatch.setattr(onnx_export, "export", no_export)
    again = load_onnx_encoder(moved, precision="fp32")
    assert again.folder == first.folder
    assert again.identity == moved
    texts = ["a red square", "two blue circles"]
    assert np.array_equal(again.encode_texts(texts), first.encode_texts(texts))


def imported_modules(importtime_output: str) -> set[str]:
    """Module names from `python -X importtime` lines ('import time: self | cum | name')."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in importtime_output.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }


def test_new_collection_with_a_cached_export_never_imports_torch_or_open_clip(
    tiny_model, tmp_path
) -> None:
    cached = load_onnx_encoder(tiny_model, precision="fp32")  # the export, made once
    write_photos(tmp_path / "photos", ["a.jpg", "b.png", "c.jpg"])
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    environment.pop("RETRIEVAL_INDEX", None)
    for args in (
        ["index", str(tmp_path / "photos"), "--model", tiny_model.name, "--backend", "onnx"],
        ["search", "a red car", "-k", "2", "--backend", "onnx", "--paths"],
    ):
        done = subprocess.run(
            [sys.executable, "-X", "importtime", str(REPO / "cli.py"), *args],
            cwd=tmp_path / "photos", env=environment, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        modules = imported_modules(done.stderr)
        assert "onnxruntime" in modules  # the output was read right
        heavy = {m for m in modules if m.split(".")[0] in ("torch", "open_clip")}
        assert heavy == set(), args[0]
    assert len(done.stdout.splitlines()) == 2
    manifest = json.loads((tmp_path / "photos" / ".retrieval" / "manifest.json").read_text())
    assert manifest["weights_hash"] == cached.weights_hash == known_weights_hash(tiny_model)


def test_missing_local_weights_are_a_clear_error(tmp_path) -> None:
    from retrieval.encoders.errors import ModelLoadError

    (tmp_path / "open_clip_config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="no weights"):
        known_weights_hash(model_identity(f"local-dir:{tmp_path}"))
