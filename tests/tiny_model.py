"""A tiny random open_clip model, built and saved in local-dir format without any network."""

from __future__ import annotations

from pathlib import Path

from index.manifest import ModelIdentity
from retrieval.encoders.torch_encoder import architecture, create_untrained


def make_tiny_model(folder: Path, seed: int = 0) -> ModelIdentity:
    return create_untrained(architecture("tiny"), folder, seed=seed)
