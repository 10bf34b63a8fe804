"""An ONNX Runtime backend for both towers: fp32, or int8 with dynamic quantisation.

The first use of a model exports its towers from PyTorch, checks each export against PyTorch on
real inputs, and caches it (per model identity and weights hash) in the cache directory. After
that, the query path needs neither torch nor open_clip: ONNX Runtime, a torch-free tokenizer and
Pillow do the whole job, which makes a cold text search take well under a second.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from index.atomic import write_bytes_atomic
from index.manifest import ModelIdentity

from .cache import cache_dir
from .errors import ModelLoadError

EXPORT_VERSION = 2
"""Part of the cache key: change it when the exported graphs change."""
FP32_MIN_COSINE = 0.9999
PRECISIONS = ("fp32", "int8")
TOWERS = ("image", "text")


@dataclass
class OnnxEncoder:
    """Embeds images and texts with ONNX Runtime sessions; the same interface as Encoder.

    Only the towers asked for are loaded: a text query never pays for the image tower.
    """

    identity: ModelIdentity
    dim: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize_mode: str
    context_length: int
    precision: str
    folder: Path
    preprocess_cfg: dict[str, Any] = field(default_factory=dict)
    weights_hash: str = ""
    device: str = "cpu"
    backend: str = "onnx"
    _sessions: dict[str, Future[Any]] = field(default_factory=dict, repr=False)
    _prepacked: dict[str, Future[Any]] = field(default_factory=dict, repr=False)
    _used: set[str] = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def min_side(self) -> int:
        return max(self.image_size)

    def prepare(self, image: Image.Image) -> np.ndarray:
        """Resize and crop as open_clip's eval transform does: uint8 (H, W, 3)."""
        return resize_and_crop(image, self.image_size, self.resize_mode)

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        """pixels: uint8 (n, H, W, 3). Returns float32 (n, dim), L2-normalised."""
        batch = np.asarray(pixels, dtype=np.float32).transpose(0, 3, 1, 2) / 255.0
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, -1, 1, 1)
        batch = np.ascontiguousarray((batch - mean) / std, dtype=np.float32)
        return _normalised(self._session("image").run(None, {"pixels": batch})[0])

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Returns float32 (n, dim), L2-normalised."""
        from .tokenizer import load_tokenizer

        self.start("text")  # the session loads in a thread while the tokenizer loads here
        tokens = load_tokenizer(self.context_length)(list(texts)).astype(np.int64)
        return _normalised(self._session("text").run(None, {"tokens": tokens})[0])

    def start(self, tower: str) -> None:
        """Begin loading a tower's session in the background (ONNX Runtime releases the GIL)."""
        with self._lock:
            if tower not in self._sessions:
                self._sessions[tower] = _in_background(self._load_session, tower, False)

    def settle(self, tower: str) -> None:
        """Load the tower's session for repeated calls now, and wait for it (benchmarks)."""
        with self._lock:
            if tower not in self._prepacked:
                self._prepacked[tower] = _in_background(self._load_session, tower, True)
            self._sessions[tower] = self._prepacked[tower]
        self._sessions[tower].result()

    def _session(self, tower: str) -> Any:
        """The session to run now.

        The first call of a tower runs on a session that uses the weights as stored: it starts
        in a fraction of the time (ViT-B-32's text tower: 0.02 s instead of 0.15 s; its image
        tower: 0.05 s instead of 0.6 s), which is what a one-off query needs. The second call
        starts loading, in the background, a session whose weights ONNX Runtime prepacks for its
        matrix products (1.5x the speed for one text, 2 to 3x for one image, 1.0 to 1.2x at batch
        16), and the calls after use it as soon as it is ready. Both give the same embeddings up
        to float rounding.
        """
        self.start(tower)
        with self._lock:
            prepacked = self._prepacked.get(tower)
            if prepacked is None and tower in self._used:
                self._prepacked[tower] = _in_background(self._load_session, tower, True)
            elif prepacked is not None and prepacked.done():
                self._sessions[tower] = prepacked
            self._used.add(tower)
            session = self._sessions[tower]
        return session.result()

    def _load_session(self, tower: str, prepacked: bool) -> Any:
        import onnxruntime

        # The cached graph was optimised at export: no start-up time is spent on it again.
        path = self.folder / f"{tower}_{self.precision}.onnx"
        options = _quiet_options()
        if not prepacked:
            options.add_session_config_entry("session.disable_prepacking", "1")
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _in_background(function: Callable[..., Any], *args: Any) -> Future[Any]:
    """Run function(*args) in a thread of its own; the process waits for it at exit."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnx-session")
    future = pool.submit(function, *args)
    pool.shutdown(wait=False)
    return future


def _normalised(features: np.ndarray) -> np.ndarray:
    array = np.asarray(features, dtype=np.float32)
    return array / np.maximum(np.linalg.norm(array, axis=1, keepdims=True), 1e-12)


def resize_and_crop(image: Image.Image, size: tuple[int, int], mode: str) -> np.ndarray:
    """open_clip's eval geometry on a PIL image, without torchvision: uint8 (H, W, 3).

    'shortest': the shorter side to the target with bicubic (torchvision's size rule: the
    longer side is truncated), then a centre crop; 'squash': straight to the target size.
    """
    height, width = size
    if mode == "squash":
        return np.asarray(image.resize((width, height), Image.Resampling.BICUBIC))
    if mode != "shortest" or height != width:
        raise ModelLoadError(f"the ONNX backend does not support resize mode {mode!r} yet")
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = height, int(height * long / short)
    new_size = (new_short, new_long) if w <= h else (new_long, new_short)
    if new_size != image.size:
        image = image.resize(new_size, Image.Resampling.BICUBIC)
    w, h = image.size
    top, left = round((h - height) / 2.0), round((w - width) / 2.0)
    return np.asarray(image.crop((left, top, left + width, top + height)))


# -- the cache ------------------------------------------------------------------------------


def export_folder(identity: ModelIdentity, weights_hash: str) -> Path:
    """Where this model's exports live: one folder per identity, weights and export version."""
    key = json.dumps([identity.name, identity.pretrained, weights_hash, EXPORT_VERSION])
    return cache_dir() / "onnx" / hashlib.sha256(key.encode()).hexdigest()[:24]


def load_onnx_encoder(
    identity: ModelIdentity,
    *,
    precision: str = "fp32",
    weights_hash: str | None = None,
    towers: Sequence[str] = TOWERS,
) -> OnnxEncoder:
    """An ONNX encoder for this model, exporting (and checking) its towers first if needed.

    weights_hash: the model's weights hash from the collection's manifest; without it, torch
    loads the model once to compute it.
    """
    if precision not in PRECISIONS:
        raise ModelLoadError(f"unknown ONNX precision {precision!r}; use fp32 or int8")
    if weights_hash is None:
        weights_hash = _torch_model(identity)[2]
    folder = export_folder(identity, weights_hash)
    meta = _valid_meta(folder, precision, towers)
    if meta is None:
        meta = _store_old_exports_weights_apart(folder, precision, towers)
    if meta is None:
        meta = export(identity, folder, precision)
    return OnnxEncoder(
        identity=identity,
        dim=meta["dim"],
        image_size=tuple(meta["image_size"]),
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
        resize_mode=meta["resize_mode"],
        context_length=meta["context_length"],
        precision=precision,
        folder=folder,
        preprocess_cfg=meta.get("preprocess_cfg", {}),
        weights_hash=weights_hash,
    )


def _valid_meta(folder: Path, precision: str, towers: Sequence[str]) -> dict[str, Any] | None:
    """The export's metadata if every file it needs is there and unchanged, else None.

    Each tower is two files, its graph and its weights. Size and mtime are checked on every
    start (cheap); a file whose stat changed is hashed before it is trusted again, so a corrupted
    or truncated export is rebuilt, never used.
    """
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = meta.get("files", {})
    for tower in towers:
        graph = f"{tower}_{precision}.onnx"
        for name in (graph, weights_file(graph)):
            if not _unchanged(folder / name, files.get(name)):
                return None
    return meta


def _store_old_exports_weights_apart(
    folder: Path, precision: str, towers: Sequence[str]
) -> dict[str, Any] | None:
    """Give an export from before the weights had a file of their own that file, without torch,
    and return its metadata; None if there is no such export or a file of it changed.

    Its graphs were checked against PyTorch when they were made and are unchanged, and moving
    the weights out of a graph changes no value, so the check still holds.
    """
    meta = _read_meta(folder)
    if meta is None:
        return None
    files = meta.get("files", {})
    old = []
    for tower in towers:
        graph = f"{tower}_{precision}.onnx"
        names = (graph, weights_file(graph)) if weights_file(graph) in files else (graph,)
        if not all(_unchanged(folder / name, files.get(name)) for name in names):
            return None
        if len(names) == 1:
            old.append(graph)
    for graph in old:
        with tempfile.TemporaryDirectory(prefix=f".{graph}.", dir=folder) as scratch:
            staged = Path(scratch) / graph
            _store_weights_apart(folder / graph, staged)
            _move_into_place(staged.with_name(weights_file(graph)), folder)
            _move_into_place(staged, folder)
        for stored in (graph, weights_file(graph)):
            files[stored] = _file_record(folder / stored)
    write_bytes_atomic(folder / "meta.json", (json.dumps(meta, indent=2) + "\n").encode())
    return _valid_meta(folder, precision, towers)


def weights_file(graph: str) -> str:
    """The name of the file beside a stored graph that holds its large weights."""
    return graph + ".data"


def _unchanged(path: Path, record: dict[str, Any] | None) -> bool:
    if record is None:  # e.g. an export from before the weights lived in their own file
        return False
    try:
        stat = path.stat()
    except OSError:
        return False
    if stat.st_size != record["size"]:
        return False
    return stat.st_mtime_ns == record["mtime_ns"] or _sha256(path) == record["sha256"]


def _file_record(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": _sha256(path)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def export_model(
    model: ModelIdentity | None, precision: str, collection_dir: Path | None = None
) -> dict[str, Any]:
    """Export (or find cached) the towers of a model, or of a collection's model."""
    from index.collection import Collection, find_collection
    from index.errors import CollectionNotFound

    from .models import DEFAULT_MODEL

    weights: str | None = None
    if model is None:
        directory = None
        try:
            directory = Path(collection_dir) if collection_dir else find_collection()
        except CollectionNotFound:
            directory = None
        if directory is not None:
            with Collection.open(directory, readonly=True) as collection:
                model, weights = collection.manifest.model, collection.manifest.weights_hash
    encoder = load_onnx_encoder(model or DEFAULT_MODEL, precision=precision, weights_hash=weights)
    meta = _read_meta(encoder.folder) or {}
    checks = meta.get("checks", {})
    return {
        "model": str(encoder.identity),
        "precision": precision,
        "folder": str(encoder.folder),
        "min_cosine_to_torch": {
            tower: checks.get(f"{tower}_{precision}.onnx", {}).get("min_cosine_to_torch")
            for tower in TOWERS
        },
    }


# -- exporting (needs torch) --------------------------------------------------------------------


def weights_hash(model: Any) -> str:
    """SHA-256 of a torch model's weights, in parameter-name order: the model's identity in
    caches, independent of the file format it was loaded from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _torch_model(identity: ModelIdentity) -> tuple[Any, Any, str]:
    from .models import create_model, import_torch

    import_torch()
    model, preprocess = create_model(identity)
    model = model.eval()
    return model, preprocess, weights_hash(model)


def export(identity: ModelIdentity, folder: Path, precision: str) -> dict[str, Any]:
    """Export both towers at this precision into folder, check them, and record them."""
    from .models import _split_preprocess, import_torch

    torch = import_torch()
    model, preprocess, _ = _torch_model(identity)

    _, mean, std = _split_preprocess(preprocess)
    cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    size = model.visual.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    context_length = int(model.context_length)
    folder.mkdir(parents=True, exist_ok=True)
    meta = _read_meta(folder) or {"files": {}, "checks": {}}
    image_in = torch.from_numpy(np.stack([_probe_pixels(i, size) for i in range(4)]))
    probe = (image_in.permute(0, 3, 1, 2).float() / 255) - torch.tensor(mean).view(1, 3, 1, 1)
    probe = probe / torch.tensor(std).view(1, 3, 1, 1)
    tokens = _probe_tokens(identity, context_length)
    with torch.no_grad():
        reference = {
            "image": _normalised(model.encode_image(probe).float().numpy()),
            "text": _normalised(model.encode_text(tokens).float().numpy()),
        }
    for tower in TOWERS:
        sample = probe if tower == "image" else tokens
        name = f"{tower}_{precision}.onnx"
        cosine = _export_tower(model, tower, sample, folder / name, precision, reference[tower])
        if precision == "fp32" and cosine < FP32_MIN_COSINE:
            (folder / name).unlink(missing_ok=True)
            (folder / weights_file(name)).unlink(missing_ok=True)
            raise ModelLoadError(
                f"the ONNX export of {identity}'s {tower} tower disagrees with PyTorch (cosine "
                f"{cosine:.6f} < {FP32_MIN_COSINE}); it was not used; use --backend torch"
            )
        for stored in (name, weights_file(name)):
            meta["files"][stored] = _file_record(folder / stored)
        meta["checks"][name] = {"min_cosine_to_torch": cosine}
    meta.update(
        model=identity.name, pretrained=identity.pretrained, dim=reference["image"].shape[1],
        image_size=list(size), mean=list(mean), std=list(std),
        resize_mode=cfg.get("resize_mode", "shortest"), context_length=context_length,
        preprocess_cfg={k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
    )  # fmt: skip
    write_bytes_atomic(folder / "meta.json", (json.dumps(meta, indent=2) + "\n").encode())
    return meta


def _read_meta(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _export_tower(
    model: Any, tower: str, sample: Any, path: Path, precision: str, reference: np.ndarray
) -> float:
    """Export one tower to path and its weights file beside it, quantised for int8, and return
    the smallest cosine between its embeddings and PyTorch's on the probe inputs.

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
            return self.model.encode_text(x)

    input_name = "pixels" if tower == "image" else "tokens"
    with (
        tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as scratch,
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        plain = Path(scratch) / "fp32.onnx"
        torch.onnx.export(
            Tower(), (sample,), str(plain), input_names=[input_name],
            output_names=["embeddings"], opset_version=17, dynamo=False,
            dynamic_axes={input_name: {0: "batch"}, "embeddings": {0: "batch"}},
        )  # fmt: skip
        if precision == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantised = Path(scratch) / "int8.onnx"
            logging.disable(logging.WARNING)  # it suggests a pre-processing step we do not need
            try:
                quantize_dynamic(str(plain), str(quantised), weight_type=QuantType.QInt8)
            finally:
                logging.disable(logging.NOTSET)
            plain = quantised
        optimised = Path(scratch) / "optimised.onnx"
        _optimise(plain, optimised)
        staged = Path(scratch) / path.name
        _store_weights_apart(optimised, staged)
        session = onnxruntime.InferenceSession(
            str(staged), _quiet_options(), providers=["CPUExecutionProvider"]
        )
        got = _normalised(session.run(None, {input_name: sample.numpy()})[0])
        del session
        _move_into_place(staged.with_name(weights_file(staged.name)), path.parent)
        _move_into_place(staged, path.parent)
    return float((got * reference).sum(axis=1).min())


WEIGHTS_ALIGNMENT = 1 << 16
"""Offsets of the weights in their file: a multiple of the largest page or mapping granularity,
so that ONNX Runtime maps them from the file instead of copying them."""


def _store_weights_apart(source: Path, target: Path) -> None:
    """Save source's graph as target, with its weights of 64 KiB or more in a file beside it
    (weights_file), each at an aligned offset.

    ONNX Runtime then maps those weights from the file rather than parsing them out of the graph
    and copying them: ViT-B-32's text tower starts in about a third of the time at less than half
    the peak memory, and the rows of the token embedding table that a query never looks up are
    never read. The values are unchanged, so are the embeddings.
    """
    import onnx
    from onnx.external_data_helper import set_external_data

    model = onnx.load(str(source))
    location = weights_file(target.name)
    with open(target.with_name(location), "wb") as data:
        for tensor in model.graph.initializer:
            if not tensor.HasField("raw_data") or len(tensor.raw_data) < WEIGHTS_ALIGNMENT:
                continue
            data.write(b"\0" * (-data.tell() % WEIGHTS_ALIGNMENT))
            offset = data.tell()
            data.write(tensor.raw_data)
            set_external_data(tensor, location, offset, len(tensor.raw_data))
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL
    onnx.save(model, str(target))


def _move_into_place(staged: Path, folder: Path) -> None:
    """Move a finished file from the scratch folder into folder, durably."""
    with open(staged, "rb") as f:
        os.fsync(f.fileno())
    os.replace(staged, folder / staged.name)
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _quiet_options(optimisation: str = "ORT_DISABLE_ALL") -> Any:
    """Session options whose idle threads sleep rather than spin: they share the cores with
    decoding threads and with PyTorch."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = getattr(onnxruntime.GraphOptimizationLevel, optimisation)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def _optimise(source: Path, target: Path) -> None:
    """Save the graph as ONNX Runtime optimises it (portable, 'extended' level), so that
    loading it later skips that work: a third off a cold query's session start."""
    import onnxruntime

    options = _quiet_options("ORT_ENABLE_EXTENDED")
    options.optimized_model_filepath = str(target)
    onnxruntime.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])


def _probe_pixels(seed: int, size: tuple[int, int]) -> np.ndarray:
    """A photo-like probe picture: smooth colour fields with edges, uint8 (H, W, 3)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((size[1], size[0]), Image.Resampling.BICUBIC)
    return np.asarray(image)


PROBE_TEXTS = (
    "a photo of a dog on a beach",
    "two people riding bicycles in the rain",
    "🌅 sunset &amp; sea",
    "A RED CAR parked next to a building, at night.",
)


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
