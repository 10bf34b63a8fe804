"""The model of a collection: loaded as the collection remembers it, checked against it."""

from __future__ import annotations

from collections.abc import Sequence

from index.collection import Collection
from index.errors import CollectionError

from .encoders import load_encoder
from .encoders.protocol import Encoder


def encoder_for(
    collection: Collection,
    *,
    device: str = "auto",
    precision: str = "auto",
    backend: str = "auto",
    towers: Sequence[str] | None = None,
) -> Encoder:
    """Load the model that built the collection (an Encoder or OnnxEncoder).

    The manifest's weights hash is passed on, so a cached ONNX export is found without loading
    torch. A collection made before that hash was recorded gets it now, but only when it is
    open for writing (its lock held): reading a collection never writes it.
    """
    manifest = collection.manifest
    options = {} if towers is None else {"towers": tuple(towers)}
    encoder = load_encoder(manifest.model, device=device, precision=precision, backend=backend,
                           weights_hash=manifest.weights_hash, **options)  # fmt: skip
    check_encoder(collection, encoder)
    if collection.writable and manifest.weights_hash is None and encoder.backend == "torch":
        collection.record_encoder(
            encoder.weights_hash, backend=encoder.backend, precision=encoder.precision
        )
    return encoder


def check_encoder(collection: Collection, encoder: Encoder) -> None:
    """Refuse an encoder whose embeddings do not fit the collection's."""
    if encoder.dim != collection.manifest.dim:
        raise CollectionError(
            f"model {encoder.identity} gives {encoder.dim}-d embeddings but the collection in "
            f"{collection.dir} holds {collection.manifest.dim}-d ones"
        )
