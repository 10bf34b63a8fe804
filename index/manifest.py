"""The collection's manifest: what built it and how its vectors are indexed."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .atomic import write_bytes_atomic
from .errors import CollectionTooNew, CorruptCollection, StorageError

MANIFEST_VERSION = 1


@dataclass(frozen=True)
class ModelIdentity:
    """An open_clip model as the collection remembers it.

    name: open_clip architecture name, or an `hf-hub:` / `local-dir:` identifier.
    pretrained: the pretrained tag (None for hub and local models, whose weights come with them).
    """

    name: str
    pretrained: str | None = None

    def __str__(self) -> str:
        return f"{self.name} ({self.pretrained})" if self.pretrained else self.name


@dataclass
class Manifest:
    model: ModelIdentity
    dim: int
    root: str
    """The indexed root: relative to the collection directory when inside it, else absolute."""
    factory: str = "Flat"
    embedding_dtype: str = "float16"
    preprocess: dict[str, Any] = field(default_factory=dict)
    index_version: int = -1
    """The catalog's image version the saved FAISS index reflects; -1 when there is none."""
    text_index_version: int = -1
    """Likewise for the FAISS index of the collection's texts."""
    auto_index: bool = True
    """Choose the image index's factory from the collection's size as it grows."""
    memory_budget: int | None = None
    """Bytes the image index may use (None: no limit); drives the automatic choice."""
    target_recall: float = 0.95
    search_params: dict[str, int] = field(default_factory=dict)
    """The tuned search depth ({"nprobe": 16}), passed with every search of the image index."""
    tuning: dict[str, Any] = field(default_factory=dict)
    """What tuning measured: recall@k against exact search, queries, ms per query."""
    index_updates: str = "in place"
    """How the image index follows changes: 'in place' (add and remove) or 'rebuilt'."""
    weights_hash: str | None = None
    """SHA-256 of the model's weights, computed once: the key of cached ONNX exports."""
    backend: str = "torch"
    """What encoded the stored embeddings: torch or onnx."""
    precision: str = "fp32"
    """...and at which precision (fp32, bf16, int8)."""
    version: int = MANIFEST_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "the manifest") -> Manifest:
        """Parse a manifest; CollectionTooNew when a newer version of retrieval wrote it."""
        data = json.loads(text)
        version = data.get("version", MANIFEST_VERSION)
        if isinstance(version, int) and version > MANIFEST_VERSION:
            raise CollectionTooNew(
                f"{source} was made by a newer version of retrieval (manifest version {version}; "
                f"this one reads up to {MANIFEST_VERSION}); upgrade retrieval to use it"
            )
        data["model"] = ModelIdentity(**data["model"])
        return cls(**data)

    @classmethod
    def read(cls, path: Path) -> Manifest:
        try:
            return cls.from_json(path.read_text(encoding="utf-8"), str(path))
        except FileNotFoundError:
            raise
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            raise CorruptCollection(
                f"{path} is not a readable manifest ({e}); run `retrieval check --repair` to "
                "rebuild it from the catalog"
            ) from e

    def write(self, path: Path) -> None:
        try:
            write_bytes_atomic(path, self.to_json().encode("utf-8"))
        except OSError as e:
            raise StorageError(
                f"cannot write {path} ({e.strerror or e}); free some space (or make it "
                "writable) and run the command again"
            ) from e
