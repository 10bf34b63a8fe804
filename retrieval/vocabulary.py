"""The built-in label vocabulary: ImageNet's classes, zero-shot style, so that tagging an image
works before any text has been added to a collection.

Each class is the normalised mean of its prompt templates' embeddings, as zero-shot
classification does. The vocabulary is embedded once per model and kept in the cache directory.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import io
import json
from pathlib import Path

import numpy as np

from index.atomic import write_bytes_atomic
from index.vectors import normalised

from .cache import cache_dir
from .encoders.errors import ModelLoadError
from .encoders.identity import LOCAL_DIR
from .encoders.protocol import Encoder

# A CPU text tower does a few dozen prompts per second: two templates there, more on a GPU.
CPU_TEMPLATES = ("a photo of a {}.", "itap of a {}.")
GPU_TEMPLATES = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)


@functools.lru_cache(maxsize=1)
def class_names() -> list[str]:
    """ImageNet's 1,000 class names as open_clip ships them.

    Read from open_clip's source without importing it: importing open_clip imports torch,
    which the ONNX query path must not pay for.
    """
    spec = importlib.util.find_spec("open_clip")
    folders = list(spec.submodule_search_locations or []) if spec else []
    source = next((Path(f) / "zero_shot_metadata.py" for f in folders), None)
    if source is None or not source.is_file():
        raise ModelLoadError(
            "ImageNet's class names ship with open_clip_torch, which is not installed; "
            "add texts to the collection with `retrieval add-texts` instead"
        )
    for node in ast.parse(source.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "IMAGENET_CLASSNAMES" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise ModelLoadError(f"{source} defines no IMAGENET_CLASSNAMES")


def templates_for(encoder: Encoder) -> tuple[str, ...]:
    return GPU_TEMPLATES if encoder.device.startswith("cuda") else CPU_TEMPLATES


def embed_classes(
    encoder: Encoder, names: list[str], templates: tuple[str, ...], batch_size: int = 256
) -> np.ndarray:
    """float32 (len(names), d): per class, the normalised mean of its templates' embeddings."""
    prompts = [template.format(name) for name in names for template in templates]
    parts = [
        encoder.encode_texts(prompts[start : start + batch_size])
        for start in range(0, len(prompts), batch_size)
    ]
    per_prompt = np.concatenate(parts).reshape(len(names), len(templates), -1)
    mean = per_prompt.mean(axis=1)
    return normalised(mean)


def vocabulary(encoder: Encoder) -> tuple[list[str], np.ndarray]:
    """(class names, float32 (n, d) embeddings) for this model, from the cache when there."""
    names = class_names()
    templates = templates_for(encoder)
    path = cache_dir() / "vocabulary" / f"{_cache_key(encoder, names, templates)}.npy"
    if path.is_file():
        vectors = np.load(path)
        if vectors.shape == (len(names), encoder.dim):
            return names, vectors
    vectors = embed_classes(encoder, names, templates)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.save(buffer, vectors)
    write_bytes_atomic(path, buffer.getvalue())
    return names, vectors


def _cache_key(encoder: Encoder, names: list[str], templates: tuple[str, ...]) -> str:
    identity = encoder.identity
    weights: list[tuple[str, int, int]] = []
    if identity.name.startswith(LOCAL_DIR):
        # The same folder may hold retrained weights: key on the files' size and mtime too.
        folder = Path(identity.name[len(LOCAL_DIR) :])
        weights = [
            (f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(folder.iterdir())
        ]
    text = json.dumps(
        [
            identity.name,
            identity.pretrained,
            weights,
            names,
            templates,
            encoder.backend,
            encoder.precision,
        ]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]
