"""Contrastive training: it learns, locks, saves loadable models and resumes exactly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retrieval.encoders import load_encoder
from retrieval.encoders.identity import model_identity
from retrieval.eval.datasets import load_dataset
from retrieval.images import load_image
from retrieval.training import TrainConfig, TrainProgress, train

# Small enough for a test, big enough to learn the synthetic captions in a few hundred steps.
SMALL_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return load_dataset("synthetic:240", split="train", cache_dir=cache)


def config(out: Path, **overrides) -> TrainConfig:
    settings = dict(out=out, model_cfg=SMALL_CFG, batch_size=32, lr=2e-3, warmup=20,
                    val_split=0.25, seed=0)  # fmt: skip
    settings.update(overrides)
    return TrainConfig(**settings)


def weights(out: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(out / "open_clip_model.safetensors"))


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "model"
    losses: list[float] = []

    def record(event: TrainProgress) -> None:
        if event.phase == "step":
            losses.append(event.loss)

    report = train(dataset, config(out, steps=300), record)
    return out, report, losses


def test_training_lowers_the_loss_and_raises_recall_well_above_chance(trained):
    _, report, losses = trained
    assert len(losses) == 300
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20])
    chance = 5 / 60  # R@5 of a random ranking of 60 validation pictures
    before = report.initial_recall["text_to_image"][5]
    after = report.best_recall["text_to_image"][5]
    assert before < 3 * chance
    assert after > 0.6 and after > before + 0.4


def test_the_saved_model_loads_through_local_dir_with_the_same_embeddings(trained, dataset):
    import open_clip
    import torch

    out, _, _ = trained
    encoder = load_encoder(model_identity(f"local-dir:{out}"), device="cpu", backend="torch")
    image = load_image(dataset.root / dataset.images[0], min_size=encoder.min_side)
    mine = encoder.encode_images(encoder.prepare(image)[None])[0]

    # open_clip alone, with its own preprocessing, gives the same embedding.
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    with torch.no_grad():
        theirs = model.eval().encode_image(preprocess(image)[None], normalize=True)[0].numpy()
        text = model.encode_text(tokenizer([dataset.captions[0][0]]), normalize=True)[0].numpy()
    assert np.allclose(mine, theirs, atol=1e-5)
    assert np.allclose(encoder.encode_texts([dataset.captions[0][0]])[0], text, atol=1e-5)


def test_fine_tuning_with_a_locked_image_tower_changes_only_the_text_tower(
    dataset, tmp_path, tiny_model
):
    from safetensors.numpy import load_file

    source = tiny_model.name.removeprefix("local-dir:")
    initial = load_file(f"{source}/open_clip_model.safetensors")
    out = tmp_path / "locked"
    train(dataset, config(out, model=tiny_model, model_cfg=None, steps=12, lock_image=True,
                          val_split=0.0))  # fmt: skip
    final = weights(out)
    visual = [k for k in initial if k.startswith("visual.")]
    text = [k for k in initial if k.startswith(("transformer.", "token_embedding"))]
    assert visual and text
    assert all(np.array_equal(initial[k], final[k]) for k in visual)
    assert any(not np.array_equal(initial[k], final[k]) for k in text)


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(dataset, tmp_path):
    whole = tmp_path / "whole"
    full = train(dataset, config(whole, epochs=3, val_split=0.1))

    broken = tmp_path / "broken"

    def interrupt(event: TrainProgress) -> None:
        if event.phase == "step" and event.step == 9:  # in the middle of the second epoch
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(dataset, config(broken, epochs=3, val_split=0.1, checkpoint_every=4), interrupt)
    resumed = train(dataset, config(broken, epochs=3, val_split=0.1, resume=True))

    assert resumed.steps == full.steps
    expected, got = weights(whole), weights(broken)
    assert expected.keys() == got.keys()
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert [h["recall"] for h in resumed.history] == [h["recall"] for h in full.history]


def test_train_command_saves_a_model_the_index_command_loads(tmp_path):
    import json

    retrieval = Path(sys.executable).parent / "retrieval"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RETRIEVAL_CACHE": str(tmp_path / "cache")}
    (tmp_path / "arch.json").write_text(json.dumps(SMALL_CFG))
    out = tmp_path / "model"
    process = subprocess.run(
        [str(retrieval), "train", "synthetic:40", "--model", str(tmp_path / "arch.json"),
         "--steps", "3", "--batch-size", "8", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert process.returncode == 0, process.stderr
    assert "validation recall before training" in process.stderr
    assert (out / "open_clip_config.json").is_file()
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "one.png").write_bytes((tmp_path / "cache" / "synthetic" / "v1-N40" / "train"
                                      / "00000.png").read_bytes())  # fmt: skip
    process = subprocess.run(
        [str(retrieval), "index", str(photos), "--model", f"local-dir:{out}", "--json"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert process.returncode == 0, process.stderr
    assert json.loads(process.stdout)["added"] == 1

    bad = subprocess.run(
        [str(retrieval), "train", "synthetic:40", "--out", str(out), "--resume",
         "--model", str(tmp_path / "arch.json"), "--epochs", "1", "--steps", "2"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "either --epochs or --steps" in bad.stderr
