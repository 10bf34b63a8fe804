"""The checks an index run makes before it loads a model or creates anything: a bad option or
a collection of another folder or precision is refused while nothing has been written."""

from __future__ import annotations

from pathlib import Path

from index.collection import Collection

from .encoders import choose_backend
from .encoders.protocol import Encoder
from .errors import RetrievalError


def check_options(root: Path, batch: int | None, embedding_dtype: str | None) -> None:
    if not root.is_dir():
        raise RetrievalError(f"{root} is not a folder; give the folder of photos to index")
    if batch is not None and batch < 1:
        raise RetrievalError(f"--batch-size must be at least 1, not {batch}")
    if embedding_dtype not in (None, "float16", "float32"):
        raise RetrievalError(f"--embeddings must be float16 or float32, not {embedding_dtype!r}")


def check_collection(collection: Collection, root: Path, embedding_dtype: str | None) -> None:
    """Refuse to index another folder, or at another precision, into an existing collection."""
    stored = collection.manifest.embedding_dtype
    if embedding_dtype is not None and embedding_dtype != stored:
        raise RetrievalError(
            f"the collection in {collection.dir} stores {stored} embeddings, not "
            f"{embedding_dtype}; name another --index for a {embedding_dtype} collection"
        )
    if collection.root != root:
        raise RetrievalError(
            f"the collection in {collection.dir} indexes {collection.root}, not {root}; "
            "name another --index for this folder"
        )


DECODERS = ("auto", "cpu", "gpu")
GPU_DECODE_NEEDS = (
    "--decode gpu needs the torch backend on a CUDA device (--device cuda); use --decode cpu here"
)


def check_decode(decode: str, device: str, backend: str, encoder: Encoder | None) -> None:
    """Refuse a --decode that cannot be had before anything is loaded or created."""
    if decode not in DECODERS:
        raise RetrievalError(f"--decode must be one of {', '.join(DECODERS)}, not {decode!r}")
    if decode == "gpu" and encoder is None and choose_backend(backend, device) != "torch":
        raise RetrievalError(GPU_DECODE_NEEDS)
