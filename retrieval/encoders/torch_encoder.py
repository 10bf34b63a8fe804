"""open_clip models in PyTorch: loading, encoding images and texts, saving in local-dir format.

torch and open_clip are imported inside functions: commands that need no model (an unchanged
re-index, `info`) never pay for them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from index.manifest import ModelIdentity
from index.vectors import normalised

from .errors import ModelLoadError
from .identity import LOCAL_DIR, model_identity
from .identity import weights_hash as model_weights_hash
from .preprocess import PreprocessCfg, PreprocessedInput
from .text_tower import causal_text_tower, encode_up_to_end
from .tokenizer import up_to_last_end

if TYPE_CHECKING:
    import torch
    from PIL import Image

CONFIGS = Path(__file__).resolve().parent / "configs"


def import_torch() -> Any:
    """Import torch, first asking OpenMP to sleep rather than spin when idle.

    Decoding threads share the cores with torch's OpenMP workers, and spinning workers steal
    their time (12-megapixel JPEGs on 2 cores: the pipeline went from about 0.66 to 0.75 of the
    model's bound). It only takes effect before torch's first import; a user's setting wins.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    return torch


def resolve_device(device: str = "auto") -> str:
    """'auto' picks CUDA when torch sees a GPU, else the CPU."""
    torch = import_torch()

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"--device {device} was asked for, but torch sees no CUDA GPU")
    if device != "cpu" and not device.startswith("cuda"):
        raise ModelLoadError(f"unknown device {device!r}; use auto, cpu or cuda")
    return device


@dataclass
class TorchEncoder(PreprocessedInput):
    """An open_clip model ready to embed images and texts.

    Images travel as uint8 (n, H, W, 3) arrays made by `prepare`, the model's own resize and
    crop; normalisation happens on the model's device, batched.
    """

    identity: ModelIdentity
    model: Any
    tokenizer: Callable[[Sequence[str]], Any]
    geometry: Callable[[Image.Image], Image.Image]
    preprocess: PreprocessCfg
    device: str
    precision: str
    dim: int
    backend: str = "torch"
    _weights_hash: str | None = None
    _batch_limit: int | None = None
    """The largest batch the GPU's memory took, once a larger one ran out of it."""

    @property
    def weights_hash(self) -> str:
        """SHA-256 of the weights (computed once, on first use): the key of cached exports."""
        if self._weights_hash is None:
            self._weights_hash = model_weights_hash(self.model)
        return self._weights_hash

    def prepare(self, image: Image.Image) -> np.ndarray:
        """Resize and crop an RGB image as the model expects: uint8 (H, W, 3)."""
        return np.asarray(self.geometry(image), dtype=np.uint8)

    def encode_images(self, pixels: np.ndarray | torch.Tensor) -> np.ndarray:
        """Embed prepared images.

        pixels: uint8 (n, H, W, 3), in host memory or already on the device. Returns float32
        (n, dim), L2-normalised. A batch too large for the GPU's memory is split in halves, and
        later batches in pieces of the size that fitted.
        """
        import torch

        limit = self._batch_limit or len(pixels)
        if len(pixels) > limit:
            parts = [pixels[i : i + limit] for i in range(0, len(pixels), limit)]
            return np.concatenate([self.encode_images(part) for part in parts])
        try:
            return self._encode_images(pixels)
        except torch.cuda.OutOfMemoryError:
            if len(pixels) == 1:
                raise
            torch.cuda.empty_cache()
            self._batch_limit = len(pixels) // 2  # and so for every later batch
            return self.encode_images(pixels)

    def _encode_images(self, pixels: np.ndarray | torch.Tensor) -> np.ndarray:
        import torch

        if isinstance(pixels, torch.Tensor):
            batch = pixels.to(self.device)
        else:
            batch = torch.from_numpy(np.require(pixels, np.uint8, ["C", "W"]))
            if self.device.startswith("cuda"):
                # Pinned pages let the copy run as DMA, without a staging copy by the driver.
                batch = batch.pin_memory()
            batch = batch.to(self.device, non_blocking=True)
        # uint8 crosses the bus (a quarter of float32's bytes); the device normalises.
        batch = batch.permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.mean, device=self.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, -1, 1, 1)
        batch = (batch - mean) / std
        if self.device.startswith("cuda"):
            batch = batch.contiguous(memory_format=torch.channels_last)  # as the model's weights
        elif self.precision == "bf16":
            batch = batch.to(torch.bfloat16)  # the weights are bf16 (see wrap_model)
        with torch.inference_mode(), self._autocast():
            features = self.model.encode_image(batch)
        return normalised(features.float().cpu().numpy())

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts. Returns float32 (n, dim), L2-normalised."""
        import torch

        tokens = self.tokenizer(list(texts)).to(self.device)
        text = causal_text_tower(self.model)
        with torch.inference_mode(), self._autocast():
            if text is None:
                features = self.model.encode_text(tokens)
            else:  # the same embeddings without the padding after the end token (text_tower)
                features = encode_up_to_end(text, up_to_last_end(tokens))
        return normalised(features.float().cpu().numpy())

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        import torch

        if self.precision == "bf16" and self.device.startswith("cuda"):
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


def load_torch_encoder(identity: ModelIdentity, *, device: str, precision: str) -> TorchEncoder:
    """A TorchEncoder on this device ('auto', 'cpu', 'cuda...') at this precision ('auto', 'fp32',
    'bf16'); 'auto' is bf16 autocast on CUDA and fp32 on the CPU."""
    device = resolve_device(device)
    if precision == "auto":
        precision = "bf16" if device.startswith("cuda") else "fp32"
    if precision not in ("fp32", "bf16"):
        raise ModelLoadError(f"unknown precision {precision!r}; use auto, fp32 or bf16")
    from .weights_identity import known_weights_hash

    model, preprocess = create_model(identity)
    return wrap_model(
        identity, model, preprocess, device=device, precision=precision,
        weights_hash=known_weights_hash(identity),
    )  # fmt: skip


def wrap_model(
    identity: ModelIdentity,
    model: Any,
    preprocess: Any,
    *,
    device: str,
    precision: str,
    weights_hash: str | None = None,
) -> TorchEncoder:
    """A TorchEncoder around an open_clip model and its eval transform (device already resolved).

    bf16 is autocast on CUDA; on a CPU the weights themselves become bf16, which a CPU with
    AMX or AVX-512 BF16 runs about three times faster than fp32 (autocast there is slower than
    fp32: benchmarks/cpu_backends.py). weights_hash: the weights' identity if known (their
    file's; see weights_identity), else the state dict's hash, computed when first asked for.
    """
    import torch

    model = model.to(device).eval()
    if device.startswith("cuda"):
        model = model.to(memory_format=torch.channels_last)
    dim = probe_dim(model, device)
    weights = weights_hash
    if precision == "bf16" and not device.startswith("cuda"):
        weights = weights or model_weights_hash(model)  # of the weights as given, not as bf16
        model = model.to(torch.bfloat16)
    import open_clip

    tokenizer = open_clip.get_tokenizer(identity.name)
    geometry, config = split_preprocess(model, preprocess)
    return TorchEncoder(
        identity=identity,
        model=model,
        tokenizer=tokenizer,
        geometry=geometry,
        preprocess=config,
        device=device,
        precision=precision,
        dim=dim,
        _weights_hash=weights,
    )


def probe_dim(model: Any, device: str) -> int:
    """The embedding dimension, from one blank image through the image tower."""
    import torch

    size = model.visual.image_size
    size = (size, size) if isinstance(size, int) else size
    with torch.inference_mode():
        return int(model.encode_image(torch.zeros(1, 3, *size, device=device)).shape[-1])


def split_preprocess(model: Any, preprocess: Any) -> tuple[Callable[[Any], Any], PreprocessCfg]:
    """Split open_clip's eval transform into its PIL geometry and the model's PreprocessCfg
    (size from the image tower, mean and std from the transform, the rest as open_clip
    recorded it with the model)."""
    from torchvision.transforms import Compose, Normalize

    steps = list(preprocess.transforms)
    geometric = []
    for step in steps:
        if type(step).__name__ in ("MaybeConvertMode", "MaybeToTensor", "ToTensor"):
            break
        if callable(step) and getattr(step, "__name__", "") == "_convert_to_rgb":
            break
        geometric.append(step)
    normalize = next(s for s in steps if isinstance(s, Normalize))
    config = PreprocessCfg.from_dict(
        getattr(model.visual, "preprocess_cfg", None) or {},
        size=model.visual.image_size,
        mean=tuple(normalize.mean),
        std=tuple(normalize.std),
    )
    return Compose(geometric), config


def create_model(identity: ModelIdentity) -> tuple[Any, Any]:
    """(open_clip model, its eval transform), or ModelLoadError naming the way out."""
    import open_clip

    name = identity.name
    if name.startswith(LOCAL_DIR):
        folder = Path(name[len(LOCAL_DIR) :])
        if not (folder / "open_clip_config.json").is_file():
            raise ModelLoadError(
                f"model {identity}: no open_clip_config.json in {folder}; a local-dir: model is a "
                "folder holding open_clip_config.json and open_clip_model.safetensors"
            )
        if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
            raise ModelLoadError(
                f"model {identity}: no weights (open_clip_model.safetensors) in {folder}"
            )
    # open_clip and huggingface_hub log every retry and failure; the error below says it once.
    logging.disable(logging.ERROR)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=identity.pretrained
        )
    except Exception as e:
        # open_clip and huggingface_hub raise a zoo of types for "cannot have these weights".
        raise ModelLoadError(_load_failure_message(identity, e)) from e
    finally:
        logging.disable(logging.NOTSET)
    return model, preprocess


def _load_failure_message(identity: ModelIdentity, error: Exception) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    # The first sentence says what failed; the rest is usually a long URL or a list of tags.
    reason = text.split(". ")[0].rstrip(".")
    if len(reason) > 240:
        reason = reason[:240] + "..."
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    hint = " (HF_HUB_OFFLINE is set, so nothing can be downloaded)" if offline else ""
    return (
        f"cannot load model {identity}{hint}: {reason}. To use weights without the network, "
        "put them in a folder with open_clip_config.json and open_clip_model.safetensors and "
        "pass --model local-dir:/path/to/folder"
    )


def architecture(name: str) -> dict[str, Any]:
    """A CLIP architecture (open_clip's `model_cfg`) shipped in configs/NAME.json.

    'tiny': two layers of width 64, for tests and benchmarks that need a model but not its
    quality; 'demo': a small ViT and text transformer, about two minutes of training on two CPU
    cores. Both keep vocab_size 49408, the standard tokenizer's vocabulary.
    """
    path = CONFIGS / f"{name}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CONFIGS.glob("*.json")))
        raise ModelLoadError(f"no architecture named {name!r} (known: {known})")
    return json.loads(path.read_text(encoding="utf-8"))


def create_untrained(model_cfg: dict[str, Any], folder: Path, *, seed: int = 0) -> ModelIdentity:
    """Save a randomly initialised CLIP of this architecture in local-dir format (open_clip's
    CustomTextCLIP where the config says `custom_text`)."""
    import open_clip
    import torch

    torch.manual_seed(seed)
    settings = {key: value for key, value in model_cfg.items() if key != "custom_text"}
    kind = open_clip.CustomTextCLIP if model_cfg.get("custom_text") else open_clip.CLIP
    return save_local_dir(kind(**settings), model_cfg, folder)


def model_config(identity: ModelIdentity) -> dict[str, Any]:
    """The open_clip architecture config (`model_cfg`) of a model, to save it with its weights."""
    import open_clip

    config = open_clip.get_model_config(identity.name)
    if config is None:
        raise ModelLoadError(f"model {identity}: no open_clip config found for it")
    return dict(config)


def save_local_dir(
    model: Any,
    model_cfg: dict[str, Any],
    folder: Path,
    preprocess_cfg: dict[str, Any] | None = None,
) -> ModelIdentity:
    """Save a model in open_clip's local-dir format, loadable as `local-dir:FOLDER`.

    Writes open_clip_config.json and open_clip_model.safetensors, each atomically.
    """
    from safetensors.torch import save_file

    from index.atomic import atomic_path, write_bytes_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg or {}}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(folder / "open_clip_model.safetensors") as tmp:
        save_file(state, str(tmp))
    write_bytes_atomic(
        folder / "open_clip_config.json", (json.dumps(config, indent=2) + "\n").encode()
    )
    return model_identity(LOCAL_DIR + str(folder))
