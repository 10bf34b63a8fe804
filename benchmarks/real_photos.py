"""Real photos: index the shared COCO and scikit-image pictures, and run `bench` on COCO's own
caption files.

    python benchmarks/real_photos.py                         # ViT-B-32, ONNX fp32
    python benchmarks/real_photos.py --model tiny --backend torch

Reads ../shared/data (see its README; --data elsewhere) and never writes there: collections go
to a temporary folder. Measures
  (a) the image tower alone on ready uint8 tensors at the indexing batch size (best of a
      measurement before and one after the indexing runs),
  (b) `index_folder` over each photo folder from its files on disk (decoding, encoding and
      commits), and the files it skipped (there should be none),
  (c) `run_benchmark` on each COCO caption file: images, captions, images left out for want of a
      caption, recall@1/5/10. With random weights recall is near chance (1/images at R@1): it
      checks that COCO's format loads and runs end to end, not the model.
The model has random weights (speed does not depend on them). Prints a table and writes
benchmarks/results/real_photos.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retrieval.encoders import load_encoder
from retrieval.encoders.protocol import Encoder
from retrieval.encoders.torch_encoder import architecture, create_untrained
from retrieval.eval.bench import run_benchmark
from retrieval.eval.datasets import load_dataset
from retrieval.indexer import index_folder

REPO = Path(__file__).resolve().parent.parent
PHOTO_FOLDERS = ("coco-mini/train2017", "coco-mini/val2017", "skimage-described")
CAPTION_FILES = ("coco-mini/annotations/captions_val2017.json",
                 "coco-mini/annotations/captions_train2017.json")  # fmt: skip


def tower_rate(encoder: Encoder, batch_size: int, seconds: float = 6.0) -> float:
    """images/s of the image tower on ready uint8 tensors, after a warm-up call."""
    height, width = encoder.image_size
    pixels = np.random.default_rng(0).integers(0, 256, (batch_size, height, width, 3), np.uint8)
    encoder.encode_images(pixels)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        encoder.encode_images(pixels)
        done += batch_size
    return done / (time.perf_counter() - started)


def index_photos(encoder: Encoder, data: Path, name: str, scratch: Path, batch_size: int) -> dict:
    folder = data / name
    collection = scratch / name / ".retrieval"
    started = time.perf_counter()
    report = index_folder(
        folder, collection_dir=collection, model=encoder.identity, encoder=encoder,
        batch_size=batch_size,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    sizes = [path.stat().st_size for path in folder.iterdir() if path.is_file()]
    return {
        "folder": name,
        "files": report.added + len(report.skipped),
        "encoded": report.encoded,
        "skipped": [{"path": s.path, "error": s.error} for s in report.skipped],
        "seconds": round(elapsed, 2),
        "images_per_s": round(report.encoded / elapsed, 2),
        "median_file_kib": round(statistics.median(sizes) / 1024, 1) if sizes else 0,
    }


def bench_captions(encoder: Encoder, path: Path, batch_size: int) -> dict:
    dataset = load_dataset(str(path))
    report = run_benchmark(dataset, encoder=encoder, batch_size=batch_size)
    return {
        "file": path.name,
        "images": report.images,
        "captions": report.texts,
        "uncaptioned_images": report.uncaptioned_images,
        "text_to_image": {str(k): round(v, 4) for k, v in report.text_to_image.items()},
        "image_to_text": {str(k): round(v, 4) for k, v in report.image_to_text.items()},
        "chance_text_to_image_r1": round(1 / report.images, 4),
        "images_per_s": round(report.images_per_second, 2),
        "texts_per_s": round(report.texts_per_second, 2),
    }


def make_encoder(name: str, backend: str, folder: Path) -> tuple[Encoder, str]:
    if name == "tiny":
        identity, label = create_untrained(architecture("tiny"), folder / "tiny"), "tiny (random)"
    else:
        import open_clip

        config = open_clip.get_model_config("ViT-B-32")
        identity, label = create_untrained(config, folder / "vit-b-32"), "ViT-B-32 (random)"
    return load_encoder(identity, device="cpu", backend=backend, precision="fp32"), label


def print_tables(result: dict) -> None:
    print(f"model {result['model']}, {result['backend']} fp32, batch {result['batch_size']}, "
          f"{result['cores']} cores; image tower alone: {result['tower_images_per_s']:.1f} "
          f"images/s")  # fmt: skip
    print(f"{'folder':<28} {'files':>6} {'skipped':>8} {'images/s':>9} {'/ tower':>8}")
    for row in result["indexing"]:
        ratio = row["images_per_s"] / result["tower_images_per_s"]
        print(f"{row['folder']:<28} {row['files']:>6} {len(row['skipped']):>8} "
              f"{row['images_per_s']:>9.1f} {ratio:>8.2f}")  # fmt: skip
    print(f"\n{'caption file':<28} {'images':>6} {'captions':>8} {'no caption':>10} "
          f"{'T->I R@1/5/10':>18} {'I->T R@1/5/10':>18} {'chance R@1':>10}")  # fmt: skip
    for row in result["bench"]:
        t2i = "/".join(f"{100 * v:.1f}" for v in row["text_to_image"].values())
        i2t = "/".join(f"{100 * v:.1f}" for v in row["image_to_text"].values())
        print(f"{Path(row['file']).name:<28} {row['images']:>6} {row['captions']:>8} "
              f"{row['uncaptioned_images']:>10} {t2i:>18} {i2t:>18} "
              f"{100 * row['chance_text_to_image_r1']:>10.1f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--model", choices=("vit-b-32", "tiny"), default="vit-b-32")
    parser.add_argument("--backend", default="onnx", help="onnx or torch (fp32 either way)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/real_photos.json"))
    args = parser.parse_args()
    if not args.data.is_dir():
        parser.error(f"{args.data}: no such folder; pass --data with the shared data folder")

    with tempfile.TemporaryDirectory(prefix="real-photos-") as tmp:
        encoder, label = make_encoder(args.model, args.backend, Path(tmp))
        tower = tower_rate(encoder, args.batch_size)
        indexing = [
            index_photos(encoder, args.data, name, Path(tmp), args.batch_size)
            for name in PHOTO_FOLDERS
        ]
        tower = max(tower, tower_rate(encoder, args.batch_size))
        bench = [bench_captions(encoder, args.data / f, args.batch_size) for f in CAPTION_FILES]

    result = {
        "model": label,
        "backend": args.backend,
        "batch_size": args.batch_size,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "tower_images_per_s": round(tower, 2),
        "indexing": indexing,
        "bench": bench,
    }
    print_tables(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
