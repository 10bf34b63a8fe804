"""The ONNX backend: exports agree with PyTorch, the cache heals, and queries need no torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx as onnx_format
import onnxruntime
import pytest
import torch
from conftest import photo, write_photos
from PIL import Image

from index.manifest import ModelIdentity
from index.vectors import normalised
from retrieval.encoders import load_encoder, load_onnx_encoder, onnx_export
from retrieval.encoders.onnx_cache import EXPORT_VERSION, WEIGHTS_ALIGNMENT, export_folder
from retrieval.encoders.preprocess import resize_and_crop
from retrieval.encoders.tokenizer import load_tokenizer, up_to_last_end
from retrieval.indexer import index_folder

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("RETRIEVAL_CACHE", str(folder))
    return folder


def test_fp32_towers_agree_with_pytorch(cache, encoder, tiny_model):
    onnx = load_onnx_encoder(tiny_model, precision="fp32", weights_hash=encoder.weights_hash)
    images = np.stack([encoder.prepare(photo(seed, size=(90, 70))) for seed in range(5)])
    assert np.all((onnx.encode_images(images) * encoder.encode_images(images)).sum(1) >= 0.9999)
    texts = ["a dog on a beach", "ünïcödé & emoji 🐈", "x" * 300, ""]
    assert np.all((onnx.encode_texts(texts) * encoder.encode_texts(texts)).sum(1) >= 0.9999)
    meta = json.loads((onnx.folder / "meta.json").read_text())
    assert meta["checks"]["text_fp32.onnx"]["min_cosine_to_torch"] >= 0.9999


def test_text_graph_takes_ids_cut_after_the_last_end_token(cache, encoder, tiny_model):
    onnx = load_onnx_encoder(tiny_model, precision="fp32", weights_hash=encoder.weights_hash)
    assert json.loads((onnx.folder / "meta.json").read_text())["text_cut_after_end"] is True
    assert onnx.cut_texts
    texts = ["a dog", "a red car parked by the sea at night, its lights on", "", "word " * 90]
    whole = load_tokenizer(onnx.context_length)(texts).astype(np.int64)
    with torch.no_grad():  # open_clip itself, on the whole context
        reference = normalised(encoder.model.encode_text(torch.from_numpy(whole)).numpy())
    session = onnxruntime.InferenceSession(str(onnx.folder / "text_fp32.onnx"))
    for i, row in enumerate(whole):
        end = int(np.flatnonzero(row == row.max())[0])  # the end token: the largest id
        for width in (end + 1, end + 4, len(row)):  # cut there, with padding left, whole
            ids = row[None, : min(width, len(row))]
            got = normalised(session.run(None, {"tokens": ids})[0])
            assert float(got[0] @ reference[i]) >= 0.9999, (texts[i], width)
    # Together and one by one, through the encoder, which cuts at the longest text's end.
    together = onnx.encode_texts(texts)
    assert np.all((together * reference).sum(1) >= 0.9999)
    for i, text in enumerate(texts):
        assert float(onnx.encode_texts([text])[0] @ reference[i]) >= 0.9999


def test_up_to_last_end_drops_only_padding():
    texts = ["a dog", "two people riding bicycles in the rain", "", "x " * 200]
    whole = load_tokenizer(77)(texts)
    cut = up_to_last_end(whole)
    ends = [max(i for i, token in enumerate(row) if token != 0) for row in whole.tolist()]
    assert cut.shape == (len(texts), 77)  # the over-long text fills the context
    assert np.array_equal(up_to_last_end(whole[:3]), whole[:3, : max(ends[:3]) + 1])
    assert np.array_equal(up_to_last_end(whole[:1]), whole[:1, : ends[0] + 1])
    assert up_to_last_end(whole[:0]).shape == (0, 77)


def attention_called_otherwise(layer):
    def forward(*args, **kwargs):
        raise ValueError("only self-attention without weights runs with the token axis free")

    return forward


@pytest.mark.parametrize(
    "name, replacement",
    [
        ("_plain_self_attentions", lambda transformer: None),  # another kind of attention
        ("_self_attention", attention_called_otherwise),  # blocks that call it otherwise
    ],
)
def test_a_text_tower_that_cannot_be_cut_is_exported_whole(
    cache, encoder, tiny_model, monkeypatch, name, replacement
):
    monkeypatch.setattr(onnx_export, name, replacement)
    onnx = load_onnx_encoder(tiny_model, precision="fp32", weights_hash=encoder.weights_hash)
    assert json.loads((onnx.folder / "meta.json").read_text())["text_cut_after_end"] is False
    assert not onnx.cut_texts
    texts = ["a dog on a beach", "", "two cats"]
    assert np.all((onnx.encode_texts(texts) * encoder.encode_texts(texts)).sum(1) >= 0.9999)
    session = onnxruntime.InferenceSession(str(onnx.folder / "text_fp32.onnx"))
    assert session.get_inputs()[0].shape[1] == onnx.context_length


def test_an_export_drops_the_same_models_exports_of_earlier_versions(cache, encoder, tiny_model):
    def stored(name: str, meta: dict) -> Path:
        folder = cache / "onnx" / name
        folder.mkdir(parents=True)
        (folder / "text_fp32.onnx.data").write_bytes(b"\0" * 4096)  # the weights, again
        (folder / "meta.json").write_text(json.dumps(meta))
        return folder

    same = {"model": tiny_model.name, "pretrained": tiny_model.pretrained}
    earlier = stored("earlier", same)  # before export versions were recorded: version 2
    current = stored("current", {**same, "export_version": EXPORT_VERSION})  # this version
    other = stored("other", {"model": "local-dir:/elsewhere", "pretrained": None})
    notes = cache / "onnx" / "notes"
    notes.mkdir()  # a folder without meta.json is nobody's export: left alone
    onnx = load_onnx_encoder(tiny_model, precision="fp32", weights_hash=encoder.weights_hash)
    assert json.loads((onnx.folder / "meta.json").read_text())["export_version"] == EXPORT_VERSION
    assert not earlier.exists()
    assert current.exists() and other.exists() and notes.exists()
    assert onnx.folder.exists()


def test_int8_records_its_measured_cosine(cache, encoder, tiny_model):
    onnx = load_onnx_encoder(tiny_model, precision="int8", weights_hash=encoder.weights_hash)
    meta = json.loads((onnx.folder / "meta.json").read_text())
    for tower in ("image", "text"):
        cosine = meta["checks"][f"{tower}_int8.onnx"]["min_cosine_to_torch"]
        assert 0.9 < cosine <= 1.0 + 1e-6
    texts = ["a red car", "two cats"]
    assert np.all((onnx.encode_texts(texts) * encoder.encode_texts(texts)).sum(1) > 0.9)


@pytest.mark.parametrize("name", ["text_fp32.onnx", "text_fp32.onnx.data"])
@pytest.mark.parametrize("damage", ["truncate", "corrupt", "delete"])
def test_a_damaged_cached_export_is_detected_and_rebuilt(cache, encoder, tiny_model, damage, name):
    onnx = load_onnx_encoder(tiny_model, precision="fp32", weights_hash=encoder.weights_hash)
    path = onnx.folder / name
    good = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "corrupt":  # same size, other bytes
        path.write_bytes(good[:1000] + bytes(255 - b for b in good[1000:2000]) + good[2000:])
    else:
        path.unlink()
    again = load_onnx_encoder(tiny_model, precision="fp32", weights_hash=encoder.weights_hash)
    assert again.folder == onnx.folder
    assert path.read_bytes() == good  # the export is deterministic: rebuilt byte for byte
    vectors = again.encode_texts(["a dog"])
    assert float(vectors[0] @ encoder.encode_texts(["a dog"])[0]) >= 0.9999


def test_an_export_with_weights_inside_its_graph_is_converted_without_torch(
    cache, encoder, tiny_model, monkeypatch
):
    onnx = load_onnx_encoder(tiny_model, precision="fp32", weights_hash=encoder.weights_hash)
    # As exports were stored before the weights had a file of their own: self-contained graphs,
    # and no record of a weights file in meta.json.
    meta = json.loads((onnx.folder / "meta.json").read_text())
    exported = {path.name: path.read_bytes() for path in onnx.folder.glob("*_fp32.onnx*")}
    for tower in ("image", "text"):
        graph = onnx.folder / f"{tower}_fp32.onnx"
        onnx_format.save(onnx_format.load(str(graph)), str(graph))
        (onnx.folder / f"{tower}_fp32.onnx.data").unlink()
        del meta["files"][f"{tower}_fp32.onnx.data"]
        meta["files"][graph.name].update(
            size=graph.stat().st_size, mtime_ns=graph.stat().st_mtime_ns
        )
    (onnx.folder / "meta.json").write_text(json.dumps(meta))

    def no_export(*args: object) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr("retrieval.encoders.onnx_export.export", no_export)
    again = load_onnx_encoder(tiny_model, precision="fp32", weights_hash=encoder.weights_hash)
    files = json.loads((again.folder / "meta.json").read_text())["files"]
    for name, content in exported.items():  # as a new export stores them, byte for byte
        assert (again.folder / name).read_bytes() == content
        assert files[name]["size"] == len(content)
    texts = ["a dog", "a cat"]
    assert np.all((again.encode_texts(texts) * encoder.encode_texts(texts)).sum(1) >= 0.9999)
    images = np.stack([encoder.prepare(photo(seed, size=(80, 60))) for seed in range(2)])
    assert np.all((again.encode_images(images) * encoder.encode_images(images)).sum(1) >= 0.9999)


def test_a_damaged_old_export_is_exported_again(cache, encoder, tiny_model):
    onnx = load_onnx_encoder(tiny_model, precision="fp32", weights_hash=encoder.weights_hash)
    meta = json.loads((onnx.folder / "meta.json").read_text())
    graph = onnx.folder / "text_fp32.onnx"
    onnx_format.save(onnx_format.load(str(graph)), str(graph))
    (onnx.folder / "text_fp32.onnx.data").unlink()
    del meta["files"]["text_fp32.onnx.data"]
    (onnx.folder / "meta.json").write_text(json.dumps(meta))  # the graph's record is stale now

    again = load_onnx_encoder(tiny_model, precision="fp32", weights_hash=encoder.weights_hash)
    assert (again.folder / "text_fp32.onnx.data").is_file()
    assert float(again.encode_texts(["a dog"])[0] @ encoder.encode_texts(["a dog"])[0]) >= 0.9999


@pytest.mark.parametrize("tower", ["image", "text"])
def test_large_weights_are_stored_apart_at_aligned_offsets(cache, encoder, tiny_model, tower):
    onnx = load_onnx_encoder(tiny_model, precision="fp32", weights_hash=encoder.weights_hash)
    graph = onnx_format.load(str(onnx.folder / f"{tower}_fp32.onnx"), load_external_data=False)
    data_size = (onnx.folder / f"{tower}_fp32.onnx.data").stat().st_size
    stored_apart = 0
    for tensor in graph.graph.initializer:
        if tensor.data_location != onnx_format.TensorProto.EXTERNAL:
            assert len(tensor.raw_data) < WEIGHTS_ALIGNMENT
            continue
        entries = {entry.key: entry.value for entry in tensor.external_data}
        assert entries["location"] == f"{tower}_fp32.onnx.data"
        offset, length = int(entries["offset"]), int(entries["length"])
        assert offset % WEIGHTS_ALIGNMENT == 0 and length >= WEIGHTS_ALIGNMENT
        assert offset + length <= data_size
        stored_apart += length
    assert stored_apart > 0.9 * (onnx.folder / f"{tower}_fp32.onnx").stat().st_size


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_every_call_agrees_while_sessions_are_swapped(cache, encoder, tiny_model, precision):
    onnx = load_onnx_encoder(tiny_model, precision=precision, weights_hash=encoder.weights_hash)
    texts = ["a dog on a beach", "a red car"]
    images = np.stack([encoder.prepare(photo(seed, size=(80, 60))) for seed in range(3)])
    # The first call runs on a session without prepacked weights, the second starts loading
    # one with them, and after settle() every call runs on it.
    first = [onnx.encode_texts(texts), onnx.encode_images(images)]
    second = [onnx.encode_texts(texts), onnx.encode_images(images)]
    onnx.settle("text")
    onnx.settle("image")
    settled = [onnx.encode_texts(texts), onnx.encode_images(images)]
    for got in (second, settled):
        for a, b in zip(first, got, strict=True):
            assert np.allclose(a, b, atol=1e-5)
    if precision == "fp32":
        assert np.all((settled[0] * encoder.encode_texts(texts)).sum(1) >= 0.9999)
        assert np.all((settled[1] * encoder.encode_images(images)).sum(1) >= 0.9999)


def test_exports_are_cached_per_weights(cache, tiny_model, other_model, encoder):
    first = export_folder(tiny_model, encoder.weights_hash)
    assert export_folder(tiny_model, "another hash") != first
    # A file-based model's hash covers its config and weights: the path is not part of the key.
    assert export_folder(other_model, encoder.weights_hash) == first
    built_in = ModelIdentity(name="ViT-B-32", pretrained="openai")
    assert export_folder(built_in, encoder.weights_hash) != first
    assert export_folder(built_in, encoder.weights_hash) != export_folder(
        ModelIdentity(name="ViT-B-16", pretrained="openai"), encoder.weights_hash
    )


@pytest.mark.parametrize("size", [(64, 64), (97, 31), (31, 97), (640, 480), (63, 65), (65, 64)])
def test_the_torch_free_resize_and_crop_equals_open_clips(encoder, size):
    image = photo(3, size=size)
    assert np.array_equal(resize_and_crop(image, (64, 64), "shortest"), encoder.prepare(image))


def test_the_query_path_runs_with_torch_unimportable(tmp_path, cache, encoder, tiny_model):
    root = tmp_path / "photos"
    write_photos(root, ["a.jpg", "b.jpg", "c.jpg"])
    index_folder(root, model=tiny_model, encoder=encoder)
    load_onnx_encoder(tiny_model, precision="fp32", weights_hash=encoder.weights_hash)
    Image.open(root / "a.jpg").save(tmp_path / "query.png")

    blocker = tmp_path / "blocker"
    blocker.mkdir()
    # Installed before anything runs: torch, torchvision and open_clip can still be found (the
    # tokenizer reads open_clip's vocabulary file), but importing any of them fails.
    (blocker / "sitecustomize.py").write_text(
        "import importlib.machinery, sys\n"
        "class Refuse:\n"
        "    def create_module(self, spec):\n"
        "        raise ImportError(f'{spec.name} is blocked in this test')\n"
        "    def exec_module(self, module):\n"
        "        raise ImportError('blocked')\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] not in ('torch', 'open_clip', 'torchvision'):\n"
        "            return None\n"
        "        spec = importlib.machinery.PathFinder.find_spec(name, path)\n"
        "        if spec is not None:\n"
        "            spec.loader = Refuse()\n"
        "        return spec\n"
        "sys.meta_path.insert(0, Block())\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{blocker}{os.pathsep}{REPO}", "HF_HUB_OFFLINE": "1"}
    retrieval = Path(sys.executable).parent / "retrieval"
    for args in (["search", "a dog", "--json"], ["search", "--image", str(tmp_path / "query.png")],
                 ["describe", str(root / "b.jpg"), "--source", "vocabulary"]):  # fmt: skip
        process = subprocess.run(
            [str(retrieval), *args, "--backend", "onnx", "--index", str(root / ".retrieval")],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        if args[0] == "describe":  # the vocabulary is embedded once with the ONNX text tower too
            assert process.returncode == 0, process.stderr
            continue
        assert process.returncode == 0, process.stderr
        assert process.stdout.strip()
    # And the blocker works: the torch backend cannot run in that environment.
    process = subprocess.run(
        [str(retrieval), "search", "a dog", "--backend", "torch", "--index",
         str(root / ".retrieval")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert process.returncode != 0


def test_onnx_search_ranks_like_torch(tmp_path, cache, encoder, tiny_model):
    from retrieval.search import Searcher, parse_query

    root = tmp_path / "photos"
    write_photos(root, [f"p{i}.jpg" for i in range(12)])
    index_folder(root, model=tiny_model, encoder=encoder)
    with Searcher.open(root / ".retrieval", encoder=encoder) as searcher:
        torch_hits = searcher.search(parse_query(["a dog"]), k=12)
    onnx = load_encoder(tiny_model, backend="onnx", weights_hash=encoder.weights_hash)
    with Searcher.open(root / ".retrieval", encoder=onnx) as searcher:
        onnx_hits = searcher.search(parse_query(["a dog"]), k=12)
    assert [round(h.score, 4) for h in onnx_hits] == [round(h.score, 4) for h in torch_hits]


def test_the_encoders_package_and_its_onnx_query_path_import_no_torch():
    code = (
        "import retrieval.encoders, retrieval.encoders.onnx_encoder, "
        "retrieval.encoders.onnx_cache, retrieval.encoders.tokenizer, sys; "
        "loaded = {'torch', 'open_clip', 'torchvision'} & set(sys.modules); "
        "assert not loaded, loaded"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
