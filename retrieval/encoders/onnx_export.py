"""Exporting a model's towers from PyTorch to ONNX, fp32 or int8 (dynamic quantisation).

Each export is checked against PyTorch on probe inputs (photo-like pictures and texts) and
recorded in the cache (onnx_cache) with the smallest cosine it reached. This is the only ONNX
module that needs torch and open_clip; they are imported when an export is made.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from index.manifest import ModelIdentity
from index.vectors import normalised

from .errors import ModelLoadError
from .identity import weights_hash
from .onnx_cache import (
    EXPORT_VERSION,
    TOWERS,
    drop_superseded_exports,
    file_record,
    graph_file,
    move_into_place,
    read_meta,
    store_weights_apart,
    weights_file,
    write_meta,
)
from .onnx_encoder import quiet_options
from .text_tower import causal_text_tower, encode_up_to_end
from .tokenizer import up_to_last_end
from .torch_encoder import create_model, import_torch, split_preprocess

FP32_MIN_COSINE = 0.9999

PROBE_TEXTS = (
    "a photo of a dog on a beach",
    "two people riding bicycles in the rain",
    "🌅 sunset &amp; sea",
    "A RED CAR parked next to a building, at night.",
)


def model_weights_hash(identity: ModelIdentity) -> str:
    """The weights hash of a model (the key of its exports), loading it with torch."""
    return _torch_model(identity)[2]


def _torch_model(identity: ModelIdentity) -> tuple[Any, Any, str]:
    import_torch()
    model, preprocess = create_model(identity)
    model = model.eval()
    return model, preprocess, weights_hash(model)


def export(identity: ModelIdentity, folder: Path, precision: str) -> dict[str, Any]:
    """Export both towers at this precision into folder, check them, and record them.
    Returns the folder's metadata (meta.json) as written."""
    torch = import_torch()
    model, preprocess, _ = _torch_model(identity)

    _, config = split_preprocess(model, preprocess)
    size, mean, std = config.image_size, config.mean, config.std
    context_length = int(model.context_length)
    folder.mkdir(parents=True, exist_ok=True)
    meta = read_meta(folder) or {"files": {}, "checks": {}}
    image_in = torch.from_numpy(np.stack([_probe_pixels(i, size) for i in range(4)]))
    probe = (image_in.permute(0, 3, 1, 2).float() / 255) - torch.tensor(mean).view(1, 3, 1, 1)
    probe = probe / torch.tensor(std).view(1, 3, 1, 1)
    tokens = _probe_tokens(identity, context_length)
    with torch.no_grad():
        reference = {
            "image": normalised(model.encode_image(probe).float().numpy()),
            "text": normalised(model.encode_text(tokens).float().numpy()),
        }
    cut = _text_up_to_end(model, tokens, reference["text"])
    for tower in TOWERS:
        sample = probe if tower == "image" else tokens
        name = graph_file(tower, precision)
        cosine = _export_tower(
            model, tower, sample, folder / name, precision, reference[tower], cut=cut
        )
        if precision == "fp32" and cosine < FP32_MIN_COSINE:
            (folder / name).unlink(missing_ok=True)
            (folder / weights_file(name)).unlink(missing_ok=True)
            raise ModelLoadError(
                f"the ONNX export of {identity}'s {tower} tower disagrees with PyTorch (cosine "
                f"{cosine:.6f} < {FP32_MIN_COSINE}); it was not used; use --backend torch"
            )
        for stored in (name, weights_file(name)):
            meta["files"][stored] = file_record(folder / stored)
        meta["checks"][name] = {"min_cosine_to_torch": cosine}
    meta.update(
        model=identity.name, pretrained=identity.pretrained, dim=reference["image"].shape[1],
        image_size=list(size), mean=list(mean), std=list(std),
        resize_mode=config.resize_mode, context_length=context_length,
        preprocess_cfg=config.as_dict(), text_cut_after_end=cut is not None,
        export_version=EXPORT_VERSION,
    )  # fmt: skip
    write_meta(folder, meta)
    drop_superseded_exports(folder, meta)
    return meta


def _export_tower(
    model: Any,
    tower: str,
    sample: Any,
    path: Path,
    precision: str,
    reference: np.ndarray,
    *,
    cut: Callable[[Any], Any] | None = None,
) -> float:
    """Export one tower to path and its weights file beside it, quantised for int8, and return
    the smallest cosine between its embeddings and PyTorch's on the probe inputs.

    cut: the text tower as `_text_up_to_end` gives it, exported with the token axis free; it is
    checked on the probe tokens both whole and cut, against open_clip on the whole ones.

    Everything is built in a scratch folder beside path, checked there, and moved into place
    with os.replace; meta.json, written after, vouches for the pair."""
    import warnings

    import onnxruntime
    import torch

    class Tower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: Any) -> Any:
            if tower == "image":
                return self.model.encode_image(x)
            return self.model.encode_text(x) if cut is None else cut(x)

    input_name = "pixels" if tower == "image" else "tokens"
    free_length = tower == "text" and cut is not None
    axes = {0: "batch", 1: "tokens"} if free_length else {0: "batch"}
    whole = sample.numpy()
    checks = [(whole, reference)]  # inputs, and PyTorch's embeddings of them
    if free_length:  # cut, and cut for one text: other lengths and batch sizes than traced
        checks += [(up_to_last_end(whole), reference), (up_to_last_end(whole[:1]), reference[:1])]
        sample = torch.from_numpy(checks[1][0])
    with (
        tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as scratch,
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        plain = Path(scratch) / "fp32.onnx"
        torch.onnx.export(
            Tower(), (sample,), str(plain), input_names=[input_name],
            output_names=["embeddings"], opset_version=17, dynamo=False,
            dynamic_axes={input_name: axes, "embeddings": {0: "batch"}},
        )  # fmt: skip
        if precision == "int8":
            plain = _quantised(plain, Path(scratch) / "int8.onnx")
        optimised = Path(scratch) / "optimised.onnx"
        _optimise(plain, optimised)
        staged = Path(scratch) / path.name
        store_weights_apart(optimised, staged)
        session = onnxruntime.InferenceSession(
            str(staged), quiet_options(), providers=["CPUExecutionProvider"]
        )
        cosines = [
            float((normalised(session.run(None, {input_name: inputs})[0]) * expected).sum(1).min())
            for inputs, expected in checks
        ]
        del session
        move_into_place(staged.with_name(weights_file(staged.name)), path.parent)
        move_into_place(staged, path.parent)
    return min(cosines)


def _text_up_to_end(model: Any, tokens: Any, reference: np.ndarray) -> Callable[[Any], Any] | None:
    """The text tower on token ids of any length up to the context (text_tower), its attention
    layers written so that a trace keeps the token axis free; None where the tower is not
    causal and pooled at the end token, or its attention is not plain self-attention. It is
    checked in PyTorch on the probe texts, whole and cut, before it is exported.
    """
    import torch

    text = causal_text_tower(model)
    attentions = None if text is None else _plain_self_attentions(text.transformer)
    if attentions is None:
        return None

    def encode(ids: Any) -> Any:
        with _token_axis_free(attentions):
            return encode_up_to_end(text, ids)

    with torch.no_grad():
        for ids in (tokens, up_to_last_end(tokens)):
            try:
                got = normalised(encode(ids).float().numpy())
            except ValueError:  # the blocks call their attention otherwise than as itself
                return None
            if float((got * reference).sum(axis=1).min()) < FP32_MIN_COSINE:
                return None
    return encode


def _plain_self_attentions(transformer: Any) -> list[Any] | None:
    """The attention layers of a text transformer if each block has one, a batch-first
    nn.MultiheadAttention with one input projection and nothing added to keys or values."""
    import torch

    blocks = list(getattr(transformer, "resblocks", []))
    layers = [m for m in transformer.modules() if isinstance(m, torch.nn.MultiheadAttention)]
    plain = all(
        layer.batch_first
        and layer.in_proj_weight is not None
        and layer.bias_k is None
        and not layer.add_zero_attn
        for layer in layers
    )
    return layers if plain and blocks and len(layers) == len(blocks) else None


@contextmanager
def _token_axis_free(attentions: list[Any]) -> Iterator[None]:
    """Run these attention layers, for the duration, as the same self-attention written with
    reshapes that leave the token axis free: traced for ONNX, nn.MultiheadAttention fixes the
    sequence length at the traced one (the batch stays free)."""
    for layer in attentions:
        layer.forward = _self_attention(layer)
    try:
        yield
    finally:
        for layer in attentions:
            del layer.forward  # back to the class's own


def _self_attention(layer: Any) -> Callable[..., tuple[Any, None]]:
    import torch.nn.functional as F

    heads = layer.num_heads

    def forward(
        query: Any, key: Any, value: Any, need_weights: bool = False, attn_mask: Any = None
    ) -> tuple[Any, None]:
        if key is not query or value is not query or need_weights:
            raise ValueError("only self-attention without weights runs with the token axis free")
        batch, _, width = query.shape
        projected = F.linear(query, layer.in_proj_weight, layer.in_proj_bias)
        q, k, v = (
            part.reshape(batch, -1, heads, width // heads).transpose(1, 2)
            for part in projected.chunk(3, dim=-1)
        )
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return layer.out_proj(attended.transpose(1, 2).reshape(batch, -1, width)), None

    return forward


def _quantised(source: Path, target: Path) -> Path:
    """Dynamic int8 quantisation of a graph's weights; returns target."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # it suggests a pre-processing step we do not need
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)
    return target


def _optimise(source: Path, target: Path) -> None:
    """Save the graph as ONNX Runtime optimises it (portable, 'extended' level), so that
    loading it later skips that work: a third off a cold query's session start."""
    import onnxruntime

    options = quiet_options("ORT_ENABLE_EXTENDED")
    options.optimized_model_filepath = str(target)
    onnxruntime.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])


def _probe_pixels(seed: int, size: tuple[int, int]) -> np.ndarray:
    """A photo-like probe picture: smooth colour fields with edges, uint8 (H, W, 3)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((size[1], size[0]), Image.Resampling.BICUBIC)
    return np.asarray(image)


def _probe_tokens(identity: ModelIdentity, context_length: int) -> Any:
    """Token ids of the probe texts; refuses models whose tokenizer the ONNX path lacks."""
    import open_clip
    import torch

    from .tokenizer import load_tokenizer

    theirs = open_clip.get_tokenizer(identity.name)(list(PROBE_TEXTS))
    ours = load_tokenizer(context_length)(list(PROBE_TEXTS))
    if tuple(theirs.shape) != ours.shape or not np.array_equal(theirs.numpy(), ours):
        raise ModelLoadError(
            f"model {identity} uses a tokenizer other than CLIP's, which the ONNX backend does "
            "not have; use --backend torch"
        )
    return torch.from_numpy(ours)
