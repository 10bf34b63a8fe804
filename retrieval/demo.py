"""The offline demonstration: train a small CLIP from scratch on the synthetic dataset, index
held-out pictures with it, search them, describe one, and measure recall. No network, no GPU."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .encoders import load_encoder
from .encoders.identity import model_identity
from .encoders.torch_encoder import architecture
from .eval.bench import RecallReport, run_benchmark
from .eval.datasets import load_dataset
from .indexer import index_folder
from .reports import IndexReport
from .search import Hit, Searcher, TextHit, parse_query
from .texts import add_texts
from .training import TrainConfig, TrainProgress, TrainReport, train

TRAIN_SPEC = "synthetic:2000"  # its train split is disjoint from synthetic:500's test split
TEST_SPEC = "synthetic:500"


@dataclass
class DemoReport:
    out: Path
    training: TrainReport
    indexing: IndexReport
    searches: list[tuple[str, Path, list[Hit]]] = field(default_factory=list)
    """(query, the picture it was written for, hits)"""
    descriptions: list[tuple[Path, list[TextHit]]] = field(default_factory=list)
    recall: RecallReport | None = None


def run_demo(
    out: Path,
    *,
    epochs: int = 10,
    progress: Callable[[TrainProgress], None] | None = None,
    say: Callable[[str], None] = lambda _line: None,
    train_spec: str = TRAIN_SPEC,
    test_spec: str = TEST_SPEC,
) -> DemoReport:
    """Train, index, search, describe and benchmark; everything is left in `out`:
    out/model (local-dir format), out/photos (held-out pictures), out/collection."""
    out = Path(out).resolve()
    train_set = load_dataset(train_spec, split="train")
    test_set = load_dataset(test_spec, split="test")
    say(f"training a small CLIP from scratch on {len(train_set)} synthetic pictures")
    training = train(
        train_set,
        TrainConfig(
            out=out / "model",
            model_cfg=architecture("demo"),
            epochs=epochs,
            batch_size=64,
            lr=1e-3,
            warmup=50,
            val_split=0.05,
        ),
        progress,
    )
    photos = out / "photos"
    if photos.exists():
        shutil.rmtree(photos)
    shutil.copytree(test_set.root, photos)
    shutil.rmtree(out / "collection", ignore_errors=True)
    say(f"indexing {len(test_set)} held-out pictures into {out / 'collection'}")
    encoder = load_encoder(model_identity(f"local-dir:{out / 'model'}"), device="cpu")
    indexing = index_folder(photos, collection_dir=out / "collection", encoder=encoder,
                            model=encoder.identity)  # fmt: skip
    add_texts(test_set.texts, collection_dir=out / "collection", encoder=encoder)
    report = DemoReport(out=out, training=training, indexing=indexing)
    with Searcher.open(out / "collection", encoder=encoder) as searcher:
        n = len(test_set)
        for row in (n // 7, n // 2, n * 5 // 6):
            query, picture = test_set.captions[row][0], photos / test_set.images[row]
            report.searches.append((query, picture, searcher.search(parse_query([query]), k=3)))
        for row in (n // 12, n * 4 // 5):
            picture = photos / test_set.images[row]
            report.descriptions.append((picture, searcher.describe(picture, k=3)))
    say("measuring recall@k on the held-out pictures")
    report.recall = run_benchmark(test_set, encoder=encoder)
    return report
