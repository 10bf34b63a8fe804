"""What the catalog records about its own collection: the model, the embeddings' dimension and
dtype, and the indexed root.

The catalog holds the embeddings' meaning, so it, not the manifest, is the authority: a lost
manifest is rebuilt from this record, and a manifest that disagrees with it is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .catalog import Catalog
from .manifest import Manifest, ModelIdentity

KEYS = ("model", "dim", "embedding_dtype", "root")


@dataclass(frozen=True)
class Provenance:
    model: ModelIdentity
    dim: int
    embedding_dtype: str
    root: str


def of_manifest(manifest: Manifest) -> Provenance:
    return Provenance(manifest.model, manifest.dim, manifest.embedding_dtype, manifest.root)


def record(catalog: Catalog, provenance: Provenance) -> None:
    """Write the record into the catalog (in one transaction)."""
    model = {"name": provenance.model.name, "pretrained": provenance.model.pretrained}
    with catalog.transaction():
        catalog.set_meta("model", json.dumps(model, sort_keys=True))
        catalog.set_meta("dim", str(provenance.dim))
        catalog.set_meta("embedding_dtype", provenance.embedding_dtype)
        catalog.set_meta("root", provenance.root)


def recorded(catalog: Catalog) -> Provenance | None:
    """The catalog's record, or None for a catalog made before records were kept."""
    values = [catalog.meta_value(key) for key in KEYS]
    if any(v is None for v in values):
        return None
    model, dim, dtype, root = values
    return Provenance(ModelIdentity(**json.loads(model)), int(dim), dtype, root)


def rebuilt_manifest(provenance: Provenance) -> Manifest:
    """A manifest from the record alone: the FAISS index it names is rebuilt or checked."""
    return Manifest(
        model=provenance.model,
        dim=provenance.dim,
        root=provenance.root,
        embedding_dtype=provenance.embedding_dtype,
    )


def disagreement(manifest: Manifest, provenance: Provenance) -> str | None:
    """How the manifest differs from the catalog's record, in words; None when it does not."""
    for field, says, holds in (
        ("model", manifest.model, provenance.model),
        ("dim", manifest.dim, provenance.dim),
        ("embedding_dtype", manifest.embedding_dtype, provenance.embedding_dtype),
    ):
        if says != holds:
            return f"says {field} {says} but the catalog records {holds}"
    return None
