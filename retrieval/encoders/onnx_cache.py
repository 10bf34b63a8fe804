"""The cache of exported towers: one folder per model identity, weights hash and export version,
holding each tower's graph and weights files and a meta.json that vouches for them.

Everything here runs without torch: a valid cached export (or one in the layout from before the
weights had a file of their own) becomes an OnnxEncoder without loading the model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from index.atomic import write_bytes_atomic
from index.manifest import ModelIdentity

from ..cache import cache_dir
from .identity import HF_HUB, LOCAL_DIR
from .onnx_encoder import OnnxEncoder
from .preprocess import PreprocessCfg

EXPORT_VERSION = 3
"""Part of the cache key: change it when the exported graphs change."""
PRECISIONS = ("fp32", "int8")
TOWERS = ("image", "text")

WEIGHTS_ALIGNMENT = 1 << 16
"""Offsets of the weights in their file: a multiple of the largest page or mapping granularity,
so that ONNX Runtime maps them from the file instead of copying them."""


def export_folder(identity: ModelIdentity, weights_hash: str) -> Path:
    """Where this model's exports go: one folder per weights and export version.

    A model whose weights are a file (local-dir:, hf-hub:) is known by its weights hash alone,
    which covers its config as well (weights_identity), so the same files under another path,
    or downloaded again, find the same export. A built-in architecture is known by its name
    and pretrained tag with the hash of its state dict.
    """
    named = [] if identity.name.startswith((LOCAL_DIR, HF_HUB)) else [identity.name]
    key = json.dumps([*named, identity.pretrained, weights_hash, EXPORT_VERSION])
    return cache_dir() / "onnx" / hashlib.sha256(key.encode()).hexdigest()[:24]


def graph_file(tower: str, precision: str) -> str:
    """The name of a tower's stored graph at a precision."""
    return f"{tower}_{precision}.onnx"


def weights_file(graph: str) -> str:
    """The name of the file beside a stored graph that holds its large weights."""
    return graph + ".data"


def read_meta(folder: Path) -> dict[str, Any] | None:
    """An export folder's meta.json, or None if it is missing or unreadable."""
    try:
        return json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_meta(folder: Path, meta: dict[str, Any]) -> None:
    write_bytes_atomic(folder / "meta.json", (json.dumps(meta, indent=2) + "\n").encode())


def drop_superseded_exports(folder: Path, meta: dict[str, Any]) -> list[Path]:
    """Remove the exports of the same model (name and pretrained tag) that earlier export
    versions made beside folder: this version never reads them, and each holds the model's
    weights again (hundreds of MB to GBs). Exports of the current version stay, whatever their
    weights. Best effort: a folder that cannot be removed now (in use where files cannot be
    deleted while open) stays, and goes at a later export. Returns the folders removed."""
    removed = []
    for other in sorted(folder.parent.iterdir()):
        old = read_meta(other) if other != folder and other.is_dir() else None
        if old is None or old.get("export_version", 2) >= EXPORT_VERSION:
            continue
        if (old.get("model"), old.get("pretrained")) != (meta["model"], meta["pretrained"]):
            continue
        shutil.rmtree(other, ignore_errors=True)
        if not other.exists():
            removed.append(other)
    return removed


def cached_meta(folder: Path, precision: str, towers: Sequence[str]) -> dict[str, Any] | None:
    """The metadata of a usable export of these towers in folder, else None (export it again).

    An export in the old layout is brought to the current one first, without torch.
    """
    meta = valid_meta(folder, precision, towers)
    if meta is None:
        meta = store_old_exports_weights_apart(folder, precision, towers)
    return meta


def onnx_encoder(
    identity: ModelIdentity, folder: Path, precision: str, weights_hash: str, meta: dict[str, Any]
) -> OnnxEncoder:
    """An OnnxEncoder on the export that meta (from cached_meta or an export) describes."""
    preprocess = PreprocessCfg.from_dict(
        meta.get("preprocess_cfg", {}),
        size=tuple(meta["image_size"]),
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
        resize_mode=meta["resize_mode"],
    )
    return OnnxEncoder(
        identity=identity,
        dim=meta["dim"],
        preprocess=preprocess,
        context_length=meta["context_length"],
        precision=precision,
        folder=folder,
        weights_hash=weights_hash,
        cut_texts=bool(meta.get("text_cut_after_end", False)),
    )


def valid_meta(folder: Path, precision: str, towers: Sequence[str]) -> dict[str, Any] | None:
    """The export's metadata if every file it needs is there and unchanged, else None.

    Each tower is two files, its graph and its weights. Size and mtime are checked on every
    start (cheap); a file whose stat changed is hashed before it is trusted again, so a corrupted
    or truncated export is rebuilt, never used.
    """
    meta = read_meta(folder)
    if meta is None:
        return None
    files = meta.get("files", {})
    for tower in towers:
        graph = graph_file(tower, precision)
        for name in (graph, weights_file(graph)):
            if not _unchanged(folder / name, files.get(name)):
                return None
    return meta


def store_old_exports_weights_apart(
    folder: Path, precision: str, towers: Sequence[str]
) -> dict[str, Any] | None:
    """Give an export from before the weights had a file of their own that file, without torch,
    and return its metadata; None if there is no such export or a file of it changed.

    Its graphs were checked against PyTorch when they were made and are unchanged, and moving
    the weights out of a graph changes no value, so the check still holds.
    """
    meta = read_meta(folder)
    if meta is None:
        return None
    files = meta.get("files", {})
    old = []
    for tower in towers:
        graph = graph_file(tower, precision)
        names = (graph, weights_file(graph)) if weights_file(graph) in files else (graph,)
        if not all(_unchanged(folder / name, files.get(name)) for name in names):
            return None
        if len(names) == 1:
            old.append(graph)
    for graph in old:
        with tempfile.TemporaryDirectory(prefix=f".{graph}.", dir=folder) as scratch:
            staged = Path(scratch) / graph
            store_weights_apart(folder / graph, staged)
            move_into_place(staged.with_name(weights_file(graph)), folder)
            move_into_place(staged, folder)
        for stored in (graph, weights_file(graph)):
            files[stored] = file_record(folder / stored)
    write_meta(folder, meta)
    return valid_meta(folder, precision, towers)


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


def file_record(path: Path) -> dict[str, Any]:
    """What meta.json records of a stored file: size, mtime and SHA-256."""
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": _sha256(path)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def store_weights_apart(source: Path, target: Path) -> None:
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


def move_into_place(staged: Path, folder: Path) -> None:
    """Move a finished file from the scratch folder into folder, durably."""
    with open(staged, "rb") as f:
        os.fsync(f.fileno())
    os.replace(staged, folder / staged.name)
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
