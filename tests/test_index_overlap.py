"""An index run that starts the image session and FAISS early and encodes while it decodes stores
what encoding each file's decoded pixels on its own gives."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import photo

from index.collection import Collection, default_dir
from retrieval.encoders import load_onnx_encoder
from retrieval.encoders.onnx_encoder import model_input
from retrieval.encoders.preprocess import OPENAI_MEAN, OPENAI_STD
from retrieval.images import load_image
from retrieval.indexer import default_batch_size, index_folder


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("RETRIEVAL_CACHE", str(folder))
    return folder


def test_model_input_is_the_normalisation_written_plainly():
    pixels = np.random.default_rng(0).integers(0, 256, (3, 7, 5, 3), dtype=np.uint8)
    mean, std = np.array(OPENAI_MEAN), np.array(OPENAI_STD)
    reference = (pixels.astype(np.float64) / 255.0 - mean) / std  # (n, H, W, 3)
    got = model_input(pixels, OPENAI_MEAN, OPENAI_STD)
    assert got.dtype == np.float32 and got.flags["C_CONTIGUOUS"]
    assert got.shape == (3, 3, 7, 5)
    assert np.allclose(got, reference.transpose(0, 3, 1, 2), atol=1e-5)


def test_a_preloaded_image_session_embeds_like_the_torch_tower(cache, encoder, tiny_model):
    onnx = load_onnx_encoder(tiny_model, weights_hash=encoder.weights_hash)
    images = np.stack([encoder.prepare(photo(seed, size=(80, 60))) for seed in range(4)])
    onnx.preload("image")
    onnx.preload("image")  # a second call neither waits nor loads another session
    got = onnx.encode_images(images)
    assert np.all((got * encoder.encode_images(images)).sum(1) >= 0.9999)


def test_the_overlapped_run_stores_each_files_own_embedding(tmp_path, cache, encoder, tiny_model):
    root = tmp_path / "photos"
    root.mkdir()
    count = 21  # one full batch of the CPU default and a partial one
    for seed in range(count):
        photo(seed, size=(160 + seed, 120)).save(root / f"p{seed:02d}.jpg", quality=92)
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    seen: list[str] = []

    def progress(_event) -> None:
        seen.append(threading.current_thread().name)

    report = index_folder(
        root, model=tiny_model, backend="onnx", device="cpu", workers=2, progress=progress
    )
    onnx = load_onnx_encoder(tiny_model, weights_hash=encoder.weights_hash)
    assert default_batch_size(onnx) < count < 2 * default_batch_size(onnx)
    assert (report.added, report.encoded) == (count, count)
    assert [s.path for s in report.skipped] == ["broken.jpg"]
    with Collection.open(default_dir(root), readonly=True) as collection:
        ids, vectors, _ = collection.vectors()
        paths = [collection.catalog.by_ids(ids)[i].path for i in ids.tolist()]
    assert sorted(paths) == [f"p{seed:02d}.jpg" for seed in range(count)]
    for path, vector in zip(paths, vectors, strict=True):
        image = load_image(root / path, min_size=encoder.min_side)
        reference = encoder.encode_images(encoder.prepare(image)[None])[0]
        assert float(vector @ reference) > 0.999, path  # stored as float16
    # Progress is reported from the caller's thread only, whatever ran in the background.
    assert set(seen) == {threading.current_thread().name}
