"""Everything about a model: its identity, its preprocessing, the PyTorch towers, the torch-free
ONNX runtime with its export cache, and the tokenizer.

    encoder = load_encoder(model_identity("ViT-B-32", "laion2b_s34b_b79k"))
    vectors = encoder.encode_texts(["a dog on a beach"])        # float32 (1, dim), L2-normalised

Modules, each depending only on those listed before it: errors, identity, weights_identity,
preprocess, tokenizer, torch_encoder, onnx_encoder, onnx_cache, onnx_export. Importing this
package (or the ONNX query path: weights_identity, onnx_encoder, onnx_cache, tokenizer) imports
neither torch nor open_clip.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from index.manifest import ModelIdentity

from .errors import ModelLoadError
from .identity import DEFAULT_MODEL
from .protocol import Encoder

if TYPE_CHECKING:
    from .onnx_encoder import OnnxEncoder


def choose_backend(backend: str, device: str) -> str:
    """'auto': PyTorch where an NVIDIA GPU is (or was asked for), else ONNX Runtime, which is
    faster on a CPU at the same recall (benchmarks/cpu_backends.py). Decided without importing
    torch, which the ONNX query path never loads."""
    if backend != "auto":
        return backend
    if device.startswith("cuda"):
        return "torch"
    gpu = os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidia0")
    return "torch" if device == "auto" and gpu else "onnx"


def load_encoder(
    identity: ModelIdentity,
    *,
    device: str = "auto",
    precision: str = "auto",
    backend: str = "auto",
    weights_hash: str | None = None,
    towers: Sequence[str] = ("image", "text"),
) -> Encoder:
    """Load an open_clip model for inference (a TorchEncoder or an OnnxEncoder, both `Encoder`s).

    backend 'torch': precision 'auto' is bf16 autocast on CUDA and fp32 on the CPU; 'fp32' or
    'bf16' force one (bf16 weights on a CPU). backend 'onnx' (CPU): precision 'fp32' (auto) or
    'int8'; the towers are exported and cached on first use, and `towers` limits which are
    loaded. backend 'auto': see choose_backend; a model the ONNX path cannot take falls back to
    torch.
    Raises ModelLoadError, naming the model and the local-dir: way out, when weights cannot be had.
    """
    chosen = choose_backend(backend, device)
    if chosen == "onnx":
        if device not in ("auto", "cpu"):
            raise ModelLoadError("the onnx backend runs on the CPU; use --backend torch for CUDA")
        try:
            return load_onnx_encoder(
                identity,
                precision="fp32" if precision == "auto" else precision,
                weights_hash=weights_hash,
                towers=towers,
            )
        except ModelLoadError:
            if backend != "auto":
                raise
            backend = "torch"  # e.g. a tokenizer the ONNX path lacks: PyTorch can still run it
            precision = "auto" if precision == "int8" else precision
    else:
        backend = chosen
    if backend != "torch":
        raise ModelLoadError(f"unknown backend {backend!r}; use torch or onnx")
    from .torch_encoder import load_torch_encoder

    return load_torch_encoder(identity, device=device, precision=precision)


def load_onnx_encoder(
    identity: ModelIdentity,
    *,
    precision: str = "fp32",
    weights_hash: str | None = None,
    towers: Sequence[str] = ("image", "text"),
) -> OnnxEncoder:
    """An ONNX encoder for this model, exporting (and checking) its towers first if needed.

    weights_hash: the model's weights hash from the collection's manifest (a state-dict hash
    from before weights were identified by their file still finds its export). Without it, the
    weights are identified by their file's bytes (weights_identity), and only a model whose
    weights are no file (random weights, or a pretrained tag seen for the first time) is built
    with torch to hash them. With a known hash and a valid cached export, neither torch nor
    open_clip is imported.
    """
    from . import onnx_cache
    from .weights_identity import known_weights_hash, remember_weights_hash

    if precision not in onnx_cache.PRECISIONS:
        raise ModelLoadError(f"unknown ONNX precision {precision!r}; use fp32 or int8")
    if weights_hash is None:
        weights_hash = known_weights_hash(identity)
    if weights_hash is None:
        from .onnx_export import model_weights_hash

        weights_hash = model_weights_hash(identity)
        remember_weights_hash(identity, weights_hash)
    folder = onnx_cache.export_folder(identity, weights_hash)
    meta = onnx_cache.cached_meta(folder, precision, towers)
    if meta is None:
        from . import onnx_export

        meta = onnx_export.export(identity, folder, precision)
    return onnx_cache.onnx_encoder(identity, folder, precision, weights_hash, meta)


@dataclass(frozen=True)
class ExportReport:
    """What `export_model` made or found: the model, the precision, the cache folder, and per
    tower the smallest cosine its export reached against PyTorch (None if not recorded)."""

    model: ModelIdentity
    precision: str
    folder: Path
    min_cosine_to_torch: dict[str, float | None]

    def to_json(self) -> dict[str, Any]:
        return {
            "model": str(self.model),
            "precision": self.precision,
            "folder": str(self.folder),
            "min_cosine_to_torch": dict(self.min_cosine_to_torch),
        }


def export_model(
    model: ModelIdentity | None, precision: str, collection_dir: Path | None = None
) -> ExportReport:
    """Export (or find cached) the towers of a model, or of a collection's model (the one in
    collection_dir, or found from the current directory; else the default model)."""
    from index.collection import Collection, resolve_dir
    from index.errors import CollectionNotFound

    from .onnx_cache import TOWERS, graph_file, read_meta

    weights: str | None = None
    if model is None:
        directory = None
        try:
            directory = resolve_dir(collection_dir)
        except CollectionNotFound:
            directory = None
        if directory is not None:
            with Collection.open(directory, readonly=True) as collection:
                model, weights = collection.manifest.model, collection.manifest.weights_hash
    encoder = load_onnx_encoder(model or DEFAULT_MODEL, precision=precision, weights_hash=weights)
    checks = (read_meta(encoder.folder) or {}).get("checks", {})
    return ExportReport(
        model=encoder.identity,
        precision=precision,
        folder=encoder.folder,
        min_cosine_to_torch={
            tower: checks.get(graph_file(tower, precision), {}).get("min_cosine_to_torch")
            for tower in TOWERS
        },
    )
