"""A tiny random open_clip model, built and saved in local-dir format without any network."""

from __future__ import annotations

from pathlib import Path

from index.manifest import ModelIdentity
from retrieval.models import save_local_dir

TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {
        "context_length": 77,
        "vocab_size": 49408,  # the standard tokenizer's vocabulary
        "width": 64,
        "heads": 2,
        "layers": 2,
    },
}


def make_tiny_model(folder: Path, seed: int = 0) -> ModelIdentity:
    import open_clip
    import torch

    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CFG)
    return save_local_dir(model, TINY_CFG, folder)
