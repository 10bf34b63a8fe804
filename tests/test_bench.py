"""`retrieval bench` end to end on the synthetic dataset with the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_photos
from reference import naive_recall

from retrieval.eval.bench import run_benchmark
from retrieval.eval.datasets import load_dataset
from retrieval.eval.errors import DatasetError
from retrieval.images import load_image

RETRIEVAL = Path(sys.executable).parent / "retrieval"


@pytest.fixture
def dataset(tmp_path: Path):
    return load_dataset("synthetic:24", split="test", cache_dir=tmp_path / "cache")


def test_bench_equals_the_naive_computation_on_its_own_embeddings(tmp_path, dataset, encoder):
    out = tmp_path / "out"
    report = run_benchmark(dataset, encoder=encoder, ks=(1, 5, 10), out=out, batch_size=8)

    images = np.load(out / "image_embeddings.npy")
    texts = np.load(out / "text_embeddings.npy")
    owner = np.load(out / "text_image_index.npy")
    assert images.dtype == np.float32 and images.shape == (len(dataset), encoder.dim)
    assert texts.shape == (len(dataset.texts), encoder.dim)
    assert owner.tolist() == dataset.text_image_index.tolist()

    # The saved embeddings are the model's, in dataset order.
    first = load_image(dataset.root / dataset.images[0])
    direct = encoder.encode_images(encoder.prepare(first)[None])[0]
    assert float(images[0] @ direct) > 0.9999
    assert np.allclose(texts[:3], encoder.encode_texts(dataset.texts[:3]), atol=1e-5)

    t2i, i2t = naive_recall(images, texts, owner, (1, 5, 10))
    assert report.text_to_image == t2i
    assert report.image_to_text == i2t
    # A flat index is exact: through FAISS the numbers are the same.
    assert report.index_text_to_image == t2i
    assert report.index_image_to_text == i2t

    saved = json.loads((out / "recall.json").read_text())
    assert saved["text_to_image"] == {str(k): v for k, v in t2i.items()}
    assert saved["index"]["image_to_text"] == {str(k): v for k, v in i2t.items()}
    assert saved["model"]["name"] == encoder.identity.name
    assert (out / "recall.png").read_bytes().startswith(b"\x89PNG")


def test_bench_command_prints_one_json_object(tmp_path, tiny_model):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RETRIEVAL_CACHE": str(tmp_path / "cache")}
    process = subprocess.run(
        [str(RETRIEVAL), "bench", "synthetic:20", "--model", tiny_model.name, "--k", "1,5",
         "--json", "--batch-size", "8"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert process.returncode == 0, process.stderr
    lines = [line for line in process.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    result = json.loads(lines[0])
    for direction in ("text_to_image", "image_to_text"):
        assert set(result[direction]) == {"1", "5"}
        assert set(result["index"][direction]) == {"1", "5"}
        assert all(0 <= v <= 1 for v in result[direction].values())
    assert result["images"] == 20


def test_bench_refuses_a_dataset_with_an_unreadable_image(tmp_path, encoder):
    folder = tmp_path / "data"
    write_photos(folder, ["good.png"])
    (folder / "bad.jpg").write_text("not an image")
    (folder / "pairs.csv").write_text("image,caption\ngood.png,a picture\nbad.jpg,another\n")
    dataset = load_dataset(str(folder / "pairs.csv"))
    with pytest.raises(DatasetError, match=r"pairs\.csv line 3: image bad\.jpg"):
        run_benchmark(dataset, encoder=encoder)
