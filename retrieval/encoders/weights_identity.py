"""The identity of a model's weights, found without torch: the key of its cached ONNX exports.

A local-dir: or hf-hub: model's weights are a file; its identity is the SHA-256 of that file's
bytes together with the architecture config, so the same weights under another path, or
downloaded again, have the same identity, and any other weights another. The file's hash is
remembered in the cache by path, size and mtime, so it is read once, not on every start.

A built-in architecture with a pretrained tag names fixed published weights: its identity is
the hash of the model's state dict, computed with torch once and remembered by name and tag.
A model with random weights (pretrained 'none') has no identity until torch builds it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from index.atomic import write_bytes_atomic
from index.manifest import ModelIdentity

from ..cache import cache_dir
from .errors import ModelLoadError
from .identity import HF_HUB, LOCAL_DIR

IDENTITY_VERSION = "open_clip-file-v1"
"""Part of every file-based identity: change it if what is hashed changes."""

CONFIG_FILE = "open_clip_config.json"

# The weights file open_clip loads from a folder, most preferred first (its own order).
_PREFERRED = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.pth",
    "model.pth",
)


def known_weights_hash(identity: ModelIdentity) -> str | None:
    """The weights' identity if it can be had without torch, else None (build the model).

    Raises ModelLoadError when a local-dir: folder lacks its config or weights.
    """
    if identity.name.startswith(LOCAL_DIR):
        folder = Path(identity.name[len(LOCAL_DIR) :])
        return file_weights_hash(folder / CONFIG_FILE, _local_weights_file(identity, folder))
    if identity.name.startswith(HF_HUB):
        files = _hub_files(identity.name[len(HF_HUB) :])
        return None if files is None else file_weights_hash(*files)
    if identity.pretrained is None:
        return None  # random weights: each build draws new ones
    return _read_store().get("tags", {}).get(_tag_key(identity))


def remember_weights_hash(identity: ModelIdentity, weights_hash: str) -> None:
    """Remember the state-dict hash of a built-in architecture's pretrained tag (computed with
    torch) so that later starts need not build the model to know it."""
    if identity.name.startswith((LOCAL_DIR, HF_HUB)) or identity.pretrained is None:
        return
    store = _read_store()
    if store.get("tags", {}).get(_tag_key(identity)) != weights_hash:
        store.setdefault("tags", {})[_tag_key(identity)] = weights_hash
        _write_store(store)


def file_weights_hash(config: Path, weights: Path) -> str:
    """The identity of weights stored in a file, with the architecture config beside them:
    SHA-256 over the weights file's SHA-256 and the config's content (keys sorted)."""
    try:
        settings = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read the model config {config}: {e}") from e
    key = json.dumps([IDENTITY_VERSION, file_sha256(weights), settings], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, remembered in the cache by real path, size and mtime, so a
    file is read in full only the first time it is seen (or after it changed)."""
    real = os.path.realpath(path)
    try:
        stat = os.stat(real)
    except OSError as e:
        raise ModelLoadError(f"cannot read the model weights {path}: {e}") from e
    store = _read_store()
    record = store.get("files", {}).get(real)
    if record and record["size"] == stat.st_size and record["mtime_ns"] == stat.st_mtime_ns:
        return str(record["sha256"])
    digest = hashlib.sha256()
    try:
        with open(real, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
    except OSError as e:
        raise ModelLoadError(f"cannot read the model weights {path}: {e}") from e
    record = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest.hexdigest()}
    store = _read_store()  # another process may have added entries meanwhile
    store.setdefault("files", {})[real] = record
    _write_store(store)
    return str(record["sha256"])


def _local_weights_file(identity: ModelIdentity, folder: Path) -> Path:
    """The weights file open_clip loads from a local-dir: folder (its own choice)."""
    if not (folder / CONFIG_FILE).is_file():
        raise ModelLoadError(
            f"model {identity}: no {CONFIG_FILE} in {folder}; a local-dir: model is a folder "
            f"holding {CONFIG_FILE} and open_clip_model.safetensors"
        )
    found = [p for kind in ("safetensors", "bin", "pth") for p in sorted(folder.glob(f"*.{kind}"))]
    preferred = [p for p in found if p.name in _PREFERRED]
    if preferred:
        return min(preferred, key=lambda p: _PREFERRED.index(p.name))
    if not found:
        raise ModelLoadError(
            f"model {identity}: no weights (open_clip_model.safetensors) in {folder}"
        )
    return found[0]


def _hub_files(repo: str) -> tuple[Path, Path] | None:
    """(config, weights) of an hf-hub: model already in the local Hugging Face cache, else None."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(repo, CONFIG_FILE)
    if not isinstance(config, str):
        return None
    for name in _PREFERRED[:3]:
        weights = try_to_load_from_cache(repo, name)
        if isinstance(weights, str):
            return Path(config), Path(weights)
    return None


def _tag_key(identity: ModelIdentity) -> str:
    return f"{identity.name}|{identity.pretrained}"


def _store_path() -> Path:
    return cache_dir() / "weights.json"


def _read_store() -> dict[str, Any]:
    try:
        store = json.loads(_store_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return store if isinstance(store, dict) else {}


def _write_store(store: dict[str, Any]) -> None:
    """Best effort: a cache that cannot be written costs a re-hash next time, nothing else."""
    try:
        _store_path().parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(_store_path(), (json.dumps(store, indent=1) + "\n").encode())
    except OSError:
        return
