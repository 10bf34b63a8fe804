from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing in the suite may reach the network
# Generated datasets and ONNX exports go to a cache of the run's own, never the user's.
os.environ["RETRIEVAL_CACHE"] = tempfile.mkdtemp(prefix="retrieval-tests-cache-")
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
import pytest
from PIL import Image
from tiny_model import make_tiny_model

from index.manifest import ModelIdentity
from retrieval.encoders import load_encoder
from retrieval.encoders.torch_encoder import TorchEncoder


def pytest_unconfigure(config: pytest.Config) -> None:
    """The run's private cache goes with the run."""
    shutil.rmtree(os.environ["RETRIEVAL_CACHE"], ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> ModelIdentity:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> ModelIdentity:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "other", seed=1)


@pytest.fixture(scope="session")
def encoder(tiny_model: ModelIdentity) -> TorchEncoder:
    return load_encoder(tiny_model, device="cpu", backend="torch")


def photo(seed: int, size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A deterministic picture with structure (blocks and a gradient), distinct per seed."""
    rng = np.random.default_rng(seed)
    width, height = size
    blocks = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    big = np.kron(blocks, np.ones((height // 6 + 1, width // 8 + 1, 1), dtype=np.uint8))
    big = big[:height, :width].astype(np.int16)
    gradient = np.linspace(0, 60, width, dtype=np.int16)[None, :, None]
    return Image.fromarray(np.clip(big + gradient, 0, 255).astype(np.uint8))


def write_photos(root: Path, names: list[str], first_seed: int = 0) -> list[Path]:
    paths = []
    for offset, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image = photo(first_seed + offset)
        if path.suffix.lower() in (".jpg", ".jpeg"):
            image.save(path, quality=92)
        else:
            image.save(path)
        paths.append(path)
    return paths
