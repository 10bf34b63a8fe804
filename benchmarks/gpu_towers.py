"""The GPU check, model part: the towers in bf16 on CUDA, and indexing JPEG files end to end.

    python benchmarks/gpu_towers.py                    # on a machine with an NVIDIA GPU
    python benchmarks/gpu_towers.py --device cpu --models ViT-B-32 --files 16 --batch 8
                                                       # a dry run of the code, anywhere

With random weights (speed does not depend on them; nothing is downloaded), per model:
  - image tower images/s on ready uint8 tensors already on the device (the engine's
    Encoder.encode_images: normalisation on the device, channels-last, bf16 autocast),
  - text tower texts/s,
and, for the first model, indexing --files JPEG photos (4000x3000, written first) with
`retrieval.indexer.index_folder`: JPEGs decoded by CPU worker threads, then by nvJPEG on the GPU
(`--decode gpu`), images/s each, and the cosine between the two runs' embeddings.
Each part records its failure instead of stopping the others. Prints a table and writes JSON.
`benchmarks/gpu_check.py` runs this too (towers_section).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from retrieval.errors import RetrievalError

MODELS = ("ViT-B-32", "ViT-L-14")
FAILURES = (RuntimeError, OSError, ValueError, MemoryError, RetrievalError)


def write_photo(path: Path, seed: int, size: tuple[int, int]) -> None:
    """A 4000x3000 JPEG with structure (blocks plus noise), about 2-4 MB like a phone's."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = size
    blocks = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    image = np.kron(blocks, np.ones((height // 12 + 1, width // 16 + 1, 1), np.uint8))
    image = image[:height, :width]
    noise = rng.integers(0, 24, (height, width, 1), dtype=np.uint8)
    Image.fromarray(image + noise).save(path, quality=90)


def write_photos(folder: Path, n: int, size: tuple[int, int]) -> float:
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with ProcessPoolExecutor() as pool:
        list(pool.map(write_photo, [folder / f"{i:05d}.jpg" for i in range(n)], range(n),
                      [size] * n))  # fmt: skip
    return time.perf_counter() - started


def timed_rate(run, items: int, seconds: float) -> float:
    """Items per second of run(), after one warm-up call, over at least `seconds`."""
    run()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        run()
        done += items
    return done / (time.perf_counter() - started)


def tower_speeds(encoder, device: str, batch: int, seconds: float) -> dict:
    import torch

    height, width = encoder.image_size
    pixels = torch.randint(0, 256, (batch, height, width, 3), dtype=torch.uint8, device=device)
    texts = [f"a photo of a dog on a beach, number {i}" for i in range(batch)]
    result = {"batch": batch, "precision": encoder.precision}
    result["images_per_s"] = timed_rate(lambda: encoder.encode_images(pixels), batch, seconds)
    result["texts_per_s"] = timed_rate(lambda: encoder.encode_texts(texts), batch, seconds)
    return result


def end_to_end(folder: Path, scratch: Path, encoder, batch: int) -> dict:
    """Index the same files twice, decoding on the CPU and then on the GPU."""
    from retrieval.indexer import index_folder

    runs, vectors = {}, {}
    for decode in ("cpu", "gpu"):
        collection = scratch / f"collection-{decode}"
        try:
            report = index_folder(folder, collection_dir=collection, model=encoder.identity,
                                  encoder=encoder, batch_size=batch, decode=decode)  # fmt: skip
        except FAILURES as e:
            runs[decode] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
            continue
        runs[decode] = {
            "images_per_s": report.encoded / report.seconds,
            "encode_seconds": report.encode_seconds,
            "seconds": report.seconds,
            "encoded": report.encoded,
        }
        vectors[decode] = stored_vectors(collection)
    if len(vectors) == 2:
        cosines = [float(vectors["cpu"][p] @ vectors["gpu"][p]) for p in vectors["cpu"]]
        runs["gpu_vs_cpu_cosine"] = {"min": min(cosines), "mean": float(np.mean(cosines))}
    return runs


def stored_vectors(directory: Path) -> dict[str, np.ndarray]:
    from index.collection import Collection

    with Collection.open(directory, readonly=True) as collection:
        items = [item for item in collection.catalog.items() if item.status == "ok"]
        vectors = collection.store.read([item.row for item in items])
    return {item.path: vector for item, vector in zip(items, vectors, strict=True)}


def run(args: argparse.Namespace) -> dict:
    import open_clip

    from retrieval.encoders import load_encoder
    from retrieval.encoders.torch_encoder import create_untrained, import_torch

    import_torch()
    result: dict = {"device": args.device, "models": {}, "end_to_end": None}
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        os.environ.setdefault("RETRIEVAL_CACHE", str(scratch / "cache"))
        first_encoder = None
        for name in args.models:
            try:
                model = create_untrained(open_clip.get_model_config(name), scratch / name)
                precision = "fp32" if args.device == "cpu" else "bf16"
                encoder = load_encoder(
                    model, device=args.device, backend="torch", precision=precision
                )
                speeds = tower_speeds(encoder, args.device, args.batch, args.seconds)
                result["models"][name] = speeds
                first_encoder = first_encoder or encoder
            except FAILURES as e:
                result["models"][name] = {"error": f"{type(e).__name__}: {e}".splitlines()[0]}
        if first_encoder is not None and args.files:
            photos = scratch / "photos"
            result["photos_written_s"] = write_photos(photos, args.files, (4000, 3000))
            result["end_to_end"] = {
                "model": args.models[0],
                "files": args.files,
                **end_to_end(photos, scratch, first_encoder, args.batch),
            }
    return result


def print_table(result: dict) -> None:
    precisions = {row.get("precision") for row in result["models"].values()} - {None}
    shown = "/".join(sorted(precisions)) or "-"
    print(f"{'model':<12} {'images/s':>10} {'texts/s':>10}  ({shown} on {result['device']})")
    for name, row in result["models"].items():
        if "error" in row:
            print(f"{name:<12} {row['error']}")
        else:
            print(f"{name:<12} {row['images_per_s']:>10.1f} {row['texts_per_s']:>10.1f}")
    e2e = result.get("end_to_end")
    if e2e:
        print(f"indexing {e2e['files']} JPEGs of 4000x3000 with {e2e['model']}:")
        for decode in ("cpu", "gpu"):
            row = e2e.get(decode, {})
            shown = row.get("error") or f"{row['images_per_s']:.1f} images/s"
            print(f"  decode on {decode}: {shown}")
        if "gpu_vs_cpu_cosine" in e2e:
            cosine = e2e["gpu_vs_cpu_cosine"]
            print(f"  cosine GPU-decoded to CPU-decoded: min {cosine['min']:.4f}, "
                  f"mean {cosine['mean']:.4f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=10.0, help="per throughput figure")
    parser.add_argument("--files", type=int, default=1000, help="JPEGs for end to end")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_towers.json"))
    args = parser.parse_args()
    result = run(args)
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
