"""The recall benchmark: encode a captioned dataset into a collection and measure recall@k,
exactly over all scores and through the collection's FAISS indexes as a user's search runs."""

from __future__ import annotations

import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from index.atomic import write_bytes_atomic
from index.catalog import TEXT
from index.collection import Collection
from index.manifest import ModelIdentity

from ..encoders import load_encoder
from ..encoders.identity import DEFAULT_MODEL
from ..encoders.protocol import Encoder
from ..indexer import index_folder
from ..reports import IndexProgress
from ..texts import add_texts
from .datasets import CaptionedDataset
from .errors import DatasetError
from .recall import (
    image_to_text_ranks,
    ranks_from_neighbours,
    recall_from_ranks,
    text_to_image_ranks,
)

DEFAULT_KS = (1, 5, 10)


@dataclass
class RecallReport:
    """Recall@k in both directions, exact and through the FAISS index, with the speeds seen.

    The recall dicts map k to the share of queries answered right, in [0, 1].
    uncaptioned_images: images the dataset file lists with no caption, left out of the measure.
    """

    dataset: str
    model: ModelIdentity
    images: int
    texts: int
    ks: list[int]
    text_to_image: dict[int, float]
    image_to_text: dict[int, float]
    index_text_to_image: dict[int, float]
    index_image_to_text: dict[int, float]
    factory: str = "Flat"
    images_per_second: float = 0.0
    texts_per_second: float = 0.0
    search_ms_per_query: float = 0.0
    seconds: float = 0.0
    environment: dict[str, Any] = field(default_factory=dict)
    uncaptioned_images: int = 0

    def to_json(self) -> dict[str, Any]:
        """JSON-ready: recall dicts keyed by k as a string ("5"), and an `index` object."""

        def keyed(recalls: dict[int, float]) -> dict[str, float]:
            return {str(k): v for k, v in sorted(recalls.items())}

        data = asdict(self)
        data["model"] = {"name": self.model.name, "pretrained": self.model.pretrained}
        data["text_to_image"] = keyed(self.text_to_image)
        data["image_to_text"] = keyed(self.image_to_text)
        data["index"] = {
            "factory": self.factory,
            "text_to_image": keyed(self.index_text_to_image),
            "image_to_text": keyed(self.index_image_to_text),
        }
        del data["index_text_to_image"], data["index_image_to_text"]
        return data


@dataclass
class _Encoded:
    image_vectors: np.ndarray
    text_vectors: np.ndarray
    image_ids: np.ndarray
    text_ids: np.ndarray


def run_benchmark(
    dataset: CaptionedDataset,
    *,
    model: ModelIdentity | None = None,
    device: str = "auto",
    batch_size: int = 64,
    ks: Sequence[int] = DEFAULT_KS,
    out: Path | None = None,
    encoder: Encoder | None = None,
    progress: Callable[[IndexProgress], None] | None = None,
    backend: str = "auto",
    precision: str = "auto",
) -> RecallReport:
    """Encode `dataset` into a collection (temporary, or out/collection) and measure recall@k.

    With `out`, also writes recall.json, recall.png and the embeddings in dataset order:
    image_embeddings.npy (float32, one row per image), text_embeddings.npy (one row per caption)
    and text_image_index.npy (int64, each caption's image row).
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise DatasetError("every k must be at least 1")
    started = time.perf_counter()
    encoder = encoder or load_encoder(
        model or DEFAULT_MODEL, device=device, backend=backend, precision=precision
    )
    with tempfile.TemporaryDirectory(prefix="retrieval-bench-") as scratch:
        directory = Path(out) / "collection" if out else Path(scratch) / "collection"
        timings: dict[str, float] = {}
        encoded = _encode(dataset, directory, encoder, batch_size, progress, timings)
        report, *ranks = _measure(dataset, directory, encoded, encoder.identity, ks)
    report.images_per_second = len(dataset) / timings["images"]
    report.texts_per_second = len(dataset.texts) / max(timings["texts"], 1e-9)
    report.seconds = time.perf_counter() - started
    report.environment = _environment(encoder)
    if out:
        _write_outputs(Path(out), report, dataset, encoded, (ranks[0], ranks[1]))
    return report


def _encode(
    dataset: CaptionedDataset,
    directory: Path,
    encoder: Encoder,
    batch_size: int,
    progress: Callable[[IndexProgress], None] | None,
    timings: dict[str, float],
) -> _Encoded:
    clock = time.perf_counter()
    report = index_folder(
        dataset.root,
        collection_dir=directory,
        model=encoder.identity,
        encoder=encoder,
        batch_size=batch_size,
        embedding_dtype="float32",  # recall is measured on the embeddings as the model gave them
        paths=dataset.images,
        progress=progress,
        draft=False,  # every pixel decoded, as the published numbers were made
    )
    timings["images"] = time.perf_counter() - clock
    if report.skipped:
        first = report.skipped[0]
        origin = dict(zip(dataset.images, dataset.origins, strict=True)).get(first.path, "")
        raise DatasetError(
            f"{origin}: image {first.path} cannot be used ({first.error})"
            + (f"; {len(report.skipped) - 1} more" if len(report.skipped) > 1 else "")
        )
    clock = time.perf_counter()
    add_texts(dataset.texts, collection_dir=directory, encoder=encoder, batch_size=batch_size * 4)
    timings["texts"] = time.perf_counter() - clock

    with Collection.open(directory, readonly=True) as collection:
        items = {item.path: item for item in collection.catalog.items()}
        image_items = [items[path] for path in dataset.images]
        text_ids = collection.catalog.text_ids(dataset.texts)
        text_rows = _text_rows(collection, text_ids, dataset.texts)
        return _Encoded(
            image_vectors=collection.store.read([i.row for i in image_items]),
            text_vectors=collection.text_store.read(text_rows),
            image_ids=np.array([i.id for i in image_items], dtype=np.int64),
            text_ids=np.array([text_ids[t] for t in dataset.texts], dtype=np.int64),
        )


def _text_rows(collection: Collection, text_ids: dict[str, int], texts: list[str]) -> list[int]:
    ids, rows = collection.catalog.vector_rows(TEXT)
    row_of = dict(zip(ids, rows, strict=True))
    return [row_of[text_ids[t]] for t in texts]


def _measure(
    dataset: CaptionedDataset,
    directory: Path,
    encoded: _Encoded,
    model: ModelIdentity,
    ks: list[int],
) -> tuple[RecallReport, np.ndarray, np.ndarray]:
    owner = dataset.text_image_index
    t2i = text_to_image_ranks(encoded.image_vectors, encoded.text_vectors, owner)
    i2t = image_to_text_ranks(encoded.image_vectors, encoded.text_vectors, owner)
    depth = max(ks)
    with Collection.open(directory, readonly=True) as collection:
        collection.faiss_index()  # built and tuned before the clock starts
        factory = collection.manifest.factory
        # One batched call per direction, as the field's benchmarks search, and through the
        # engine's own search (re-ranking, the GPU), as a user's queries go.
        clock = time.perf_counter()
        _, found_images = collection.search(encoded.text_vectors, depth)
        elapsed = time.perf_counter() - clock
        _, found_texts = collection.search(encoded.image_vectors, depth, kind=TEXT)
    # A caption text may be shared by several images; a hit is any text of the image's own.
    texts_of: list[set[int]] = [set() for _ in range(len(dataset))]
    for text_id, image_row in zip(encoded.text_ids.tolist(), owner.tolist(), strict=True):
        texts_of[image_row].add(text_id)
    index_t2i = ranks_from_neighbours(found_images, encoded.image_ids[owner])
    index_i2t = ranks_from_neighbours(found_texts, texts_of)
    report = RecallReport(
        dataset=dataset.name,
        model=model,
        images=len(dataset),
        texts=len(owner),
        ks=ks,
        text_to_image=recall_from_ranks(t2i, ks),
        image_to_text=recall_from_ranks(i2t, ks),
        index_text_to_image=recall_from_ranks(index_t2i, ks),
        index_image_to_text=recall_from_ranks(index_i2t, ks),
        factory=factory,
        search_ms_per_query=1000 * elapsed / max(len(owner), 1),
        uncaptioned_images=dataset.uncaptioned,
    )
    return report, t2i, i2t


def _environment(encoder: Encoder) -> dict[str, Any]:
    device = encoder.device
    torch = sys.modules.get("torch")  # the onnx backend may run without it
    if torch is not None and device.startswith("cuda"):
        device += f" ({torch.cuda.get_device_name(device)})"
    return {
        "device": device,
        "backend": encoder.backend,
        "precision": encoder.precision,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__ if torch is not None else None,
        "git_commit": _git_commit(),
    }


def _git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def _write_outputs(
    out: Path,
    report: RecallReport,
    dataset: CaptionedDataset,
    encoded: _Encoded,
    ranks: tuple[np.ndarray, np.ndarray],
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    arrays = {
        "image_embeddings.npy": encoded.image_vectors.astype(np.float32),
        "text_embeddings.npy": encoded.text_vectors.astype(np.float32),
        "text_image_index.npy": dataset.text_image_index.astype(np.int64),
    }
    for name, array in arrays.items():
        buffer = io.BytesIO()
        np.save(buffer, array)
        write_bytes_atomic(out / name, buffer.getvalue())
    text = json.dumps(report.to_json(), indent=2) + "\n"
    write_bytes_atomic(out / "recall.json", text.encode())
    write_bytes_atomic(out / "recall.png", _plot(report, ranks))


def _plot(report: RecallReport, ranks: tuple[np.ndarray, np.ndarray]) -> bytes:
    """A PNG of recall against k, k = 1 .. max(ks, 10), for both directions."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    ks = np.arange(1, max([*report.ks, 10]) + 1)
    figure, axes = pyplot.subplots(figsize=(6, 4), dpi=120)
    for label, direction in zip(("text to image", "image to text"), ranks, strict=True):
        curve = recall_from_ranks(direction, ks.tolist())
        axes.plot(ks, [curve[int(k)] for k in ks], marker="o", markersize=3, label=label)
    axes.set(xlabel="k", ylabel="recall@k", ylim=(0, 1.02), xlim=(1, ks[-1]))
    axes.set_title(f"{report.dataset}: {report.model}", fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    pyplot.close(figure)
    return buffer.getvalue()
