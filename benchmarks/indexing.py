"""Indexing throughput: the model's bound, the real pipeline, a naive pipeline, and a re-index.

    python benchmarks/indexing.py                   # 12-megapixel and 1-megapixel JPEGs
    python benchmarks/indexing.py --sizes 4000x3000 --n 48 --reindex-files 10000

For each image size it measures images per second of
  (a) the image tower alone on ready uint8 tensors at the same batch size (the bound),
  (b) the full pipeline from JPEG files on disk (`index_folder`: threaded draft-mode decoding
      overlapped with the model, commits included),
  (c) a naive pipeline: full-size decode, the model's own preprocessing, no overlap,
and the wall time of re-indexing an unchanged root of many files, in-process and as
`retrieval index ROOT` run from a shell. Prints a table and writes JSON (--out).
(a) and (b) also report the process's CPU time per image and the cores it kept busy, and
"bound b/a" = CPU per image of (a) / that of (b): the b/a the pipeline would reach if its
extra work (decoding, hashing, commits) ran on the cores at (a)'s use of them. On few cores,
where decoding and the tower share them, b/a cannot pass it.
ViT-B-32 runs with random weights (speed does not depend on them), on --backend torch or onnx.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retrieval.encoders import load_encoder
from retrieval.encoders.protocol import Encoder
from retrieval.encoders.torch_encoder import architecture, create_untrained, import_torch
from retrieval.indexer import index_folder


def photo_like(width: int, height: int, seed: int) -> Image.Image:
    """Smooth shapes plus fine grain: compresses and decodes like a camera JPEG, unlike noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    grain = rng.integers(-12, 13, size=(height // 4, width // 4, 3), dtype=np.int16)
    grain_full = np.asarray(
        Image.fromarray((grain + 128).astype(np.uint8)).resize((width, height))
    ).astype(np.int16)
    pixels = np.clip(np.asarray(image, dtype=np.int16) + grain_full - 128, 0, 255)
    return Image.fromarray(pixels.astype(np.uint8))


def make_jpegs(folder: Path, n: int, size: tuple[int, int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    base = [photo_like(*size, seed) for seed in range(min(n, 8))]
    for i in range(n):
        # Distinct files (distinct hashes) without generating n big images from scratch.
        image = base[i % len(base)].rotate(180 * (i // len(base) % 2))
        image.save(folder / f"img{i:05d}.jpg", quality=90)


def cpu_seconds() -> float:
    """CPU time of this process, every thread (ONNX Runtime's and the decoders') included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Rate:
    """Images per second, with the CPU they cost: ms per image and cores busy on average."""

    images_per_s: float
    cpu_ms_per_image: float
    cores_busy: float


def measure(images: int, run: Callable[[], object]) -> Rate:
    cpu, started = cpu_seconds(), time.perf_counter()
    run()
    elapsed, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    return Rate(images / elapsed, 1000 * cpu / images, cpu / elapsed)


def bench_model(encoder: Encoder, batch_size: int, batches: int) -> Rate:
    height, width = encoder.image_size
    pixels = np.random.default_rng(0).integers(0, 256, (batch_size, height, width, 3), np.uint8)
    encoder.encode_images(pixels)  # warm-up
    return measure(
        batch_size * batches, lambda: [encoder.encode_images(pixels) for _ in range(batches)]
    )


def bench_pipeline(encoder: Encoder, folder: Path, batch_size: int, workers: int | None) -> Rate:
    shutil.rmtree(folder / ".retrieval", ignore_errors=True)
    files = len(list(folder.glob("*.jpg")))

    def run() -> None:
        report = index_folder(
            folder, model=encoder.identity, encoder=encoder, batch_size=batch_size, workers=workers
        )
        assert report.encoded == report.added == files, report

    return measure(files, run)


def bench_naive(encoder: Encoder, folder: Path, batch_size: int) -> float:
    """Decode at full size, preprocess, encode: one file after another, nothing overlapped."""
    files = sorted(folder.glob("*.jpg"))
    started = time.perf_counter()
    for start in range(0, len(files), batch_size):
        prepared = [
            encoder.prepare(Image.open(f).convert("RGB")) for f in files[start : start + batch_size]
        ]
        encoder.encode_images(np.stack(prepared))
    return len(files) / (time.perf_counter() - started)


def bench_reindex(folder: Path, files: int) -> dict[str, float]:
    model = create_untrained(architecture("tiny"), folder.parent / "tiny-model")
    folder.mkdir(parents=True, exist_ok=True)
    small = photo_like(64, 48, 0)
    for i in range(files):
        sub = folder / f"d{i // 1000:03d}"
        sub.mkdir(exist_ok=True)
        small.rotate(i % 360).save(sub / f"p{i:05d}.jpg", quality=80)
    index_folder(folder, model=model, device="cpu", batch_size=256)
    started = time.perf_counter()
    report = index_folder(folder)
    in_process = time.perf_counter() - started
    assert report.unchanged == files and report.encoded == 0, report
    command = [str(Path(sys.executable).parent / "retrieval"), "index", str(folder), "--json"]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    shell = time.perf_counter() - started
    return {"files": files, "in_process_s": in_process, "command_s": shell}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["4000x3000", "1152x864"])
    parser.add_argument("--n", type=int, default=160, help="JPEG files per size")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--reindex-files", type=int, default=10_000)
    parser.add_argument("--backend", default="torch", help="torch or onnx (fp32)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/indexing.json"))
    args = parser.parse_args()

    torch = import_torch()

    import open_clip

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        vit = create_untrained(open_clip.get_model_config("ViT-B-32"), Path(tmp) / "vit-b-32")
        encoder = load_encoder(vit, device="cpu", backend=args.backend)
        for spec in args.sizes:
            width, height = (int(v) for v in spec.split("x"))
            folder = Path(tmp) / spec
            make_jpegs(folder, args.n, (width, height))
            batches = max(2, args.n // args.batch_size)
            # The bound is measured before and after the pipeline; the better figure counts.
            model = bench_model(encoder, args.batch_size, batches)
            pipeline = bench_pipeline(encoder, folder, args.batch_size, args.workers)
            model = max(
                model,
                bench_model(encoder, args.batch_size, batches),
                key=lambda rate: rate.images_per_s,
            )
            naive_ips = bench_naive(encoder, folder, args.batch_size)
            rows.append(
                {
                    "size": spec,
                    "megapixels": round(width * height / 1e6, 1),
                    "files": args.n,
                    "model_images_per_s": round(model.images_per_s, 2),
                    "pipeline_images_per_s": round(pipeline.images_per_s, 2),
                    "naive_images_per_s": round(naive_ips, 2),
                    "pipeline_over_model": round(pipeline.images_per_s / model.images_per_s, 3),
                    "pipeline_over_naive": round(pipeline.images_per_s / naive_ips, 3),
                    "model_cpu_ms_per_image": round(model.cpu_ms_per_image, 1),
                    "pipeline_cpu_ms_per_image": round(pipeline.cpu_ms_per_image, 1),
                    "model_cores_busy": round(model.cores_busy, 2),
                    "pipeline_cores_busy": round(pipeline.cores_busy, 2),
                    # What b/a would be with the pipeline's extra CPU (decoding, hashing,
                    # commits) run on the model's cores at the model's use of them.
                    "cpu_bound_of_b_over_a": round(
                        model.cpu_ms_per_image / pipeline.cpu_ms_per_image, 3
                    ),
                }
            )
        reindex = bench_reindex(Path(tmp) / "reindex", args.reindex_files)

    result = {
        "model": "ViT-B-32 (random weights)",
        "backend": args.backend,
        "batch_size": args.batch_size,
        "workers": args.workers or os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "sizes": rows,
        "unchanged_reindex": reindex,
    }
    header = f"{'size':>10} {'MP':>5} {'(a) model':>10} {'(b) pipeline':>13} {'(c) naive':>10}"
    header += f" {'b/a':>6} {'b/c':>6} {'CPU ms/img a':>13} {'b':>6} {'cores a':>8} {'b':>5}"
    header += f" {'bound b/a':>10}"
    print(header)
    for r in rows:
        print(
            f"{r['size']:>10} {r['megapixels']:>5} {r['model_images_per_s']:>10.2f} "
            f"{r['pipeline_images_per_s']:>13.2f} {r['naive_images_per_s']:>10.2f} "
            f"{r['pipeline_over_model']:>6.2f} {r['pipeline_over_naive']:>6.2f} "
            f"{r['model_cpu_ms_per_image']:>13.1f} {r['pipeline_cpu_ms_per_image']:>6.1f} "
            f"{r['model_cores_busy']:>8.2f} {r['pipeline_cores_busy']:>5.2f} "
            f"{r['cpu_bound_of_b_over_a']:>10.2f}"
        )
    print(
        f"unchanged re-index of {reindex['files']} files: {reindex['in_process_s']:.2f} s "
        f"in-process, {reindex['command_s']:.2f} s as `retrieval index` from a shell"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
