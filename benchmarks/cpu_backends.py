"""CPU inference backends: PyTorch fp32 and bf16 against ONNX Runtime fp32 and int8.

    python benchmarks/cpu_backends.py [--demo-model demo/model] [--runs 5]

Measures, on this machine, with ViT-B-32 (random weights: speed and agreement do not depend on
them):
  - image-tower images/s and text-tower texts/s per backend, at batch 16 and batch 1,
  - the cosine of each backend's embeddings to PyTorch fp32's (the smallest over the probes),
  - recall@1/5/10 of each backend on the synthetic test split with the demo's trained model
    (--demo-model; skipped when it is missing: run `make demo` first),
  - the wall time and peak memory of a cold `retrieval search "a dog on a beach"` on a
    10,000-item collection, per backend, as a user's shell sees it (median of --runs).
Prints tables and writes benchmarks/results/cpu_backends.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from index.collection import Collection
from retrieval.encoders import load_encoder, load_onnx_encoder
from retrieval.encoders.identity import model_identity
from retrieval.encoders.torch_encoder import create_untrained
from retrieval.eval.bench import run_benchmark
from retrieval.eval.datasets import load_dataset

BACKENDS = (("torch", "fp32"), ("torch", "bf16"), ("onnx", "fp32"), ("onnx", "int8"))
COLD = (("torch", "fp32"), ("onnx", "fp32"), ("onnx", "int8"))
"""The cold search skips torch bf16: a cold query pays for importing torch either way."""
QUERY = "a dog on a beach"


def throughput(encoder, batch: int, seconds: float = 4.0) -> dict[str, float]:
    """images/s and texts/s at this batch size, after a warm-up call, and the cores the image
    tower had: CPU time over wall time. Every backend runs at about the same speed per CPU
    second whatever else runs beside it, so a figure with 'cores' near 1 on 2 cores says a
    neighbour took one, not that the backend is slow."""
    height, width = encoder.image_size
    pixels = np.random.default_rng(0).integers(0, 256, (batch, height, width, 3), np.uint8)
    texts = [f"a photo of a {w} on a beach at dawn" for w in ("dog", "cat", "car", "tree")]
    texts = (texts * (batch // len(texts) + 1))[:batch]
    rates, cores = [], []
    towers = (("image", encoder.encode_images, pixels), ("text", encoder.encode_texts, texts))
    for tower, encode, data in towers:
        encode(data)
        if hasattr(encoder, "settle"):  # ONNX: measure the sessions a long run ends up on
            encoder.settle(tower)
        done, started, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - started < seconds:
            encode(data)
            done += batch
        wall = time.perf_counter() - started
        rates.append(done / wall)
        cores.append((time.process_time() - cpu) / wall)
    return {"images_per_s": rates[0], "texts_per_s": rates[1], "image_cores": cores[0]}


def agreement(reference, other) -> dict[str, float]:
    rng = np.random.default_rng(1)
    height, width = reference.image_size
    pixels = rng.integers(0, 256, (8, height, width, 3), np.uint8)
    texts = ["a dog on a beach", "two people on bicycles", "a red car at night", "🌅 sunset"]
    image = (reference.encode_images(pixels) * other.encode_images(pixels)).sum(1).min()
    text = (reference.encode_texts(texts) * other.encode_texts(texts)).sum(1).min()
    return {"image": float(image), "text": float(text)}


def cold_search(collection_dir: Path, backend: str, precision: str, runs: int) -> dict:
    """Wall time as the shell sees it, the CPU time (user + system: less sensitive to a busy
    neighbour than wall time) and the process's own peak memory (GNU time's %M)."""
    retrieval = str(Path(sys.executable).parent / "retrieval")
    command = ["/usr/bin/time", "-f", "%M %U %S", retrieval, "search", QUERY, "-k", "10",
               "--backend", backend, "--precision", precision]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    times, cpu, peaks = [], [], []
    for _ in range(runs + 1):  # the first run warms the OS page cache and any export
        started = time.perf_counter()
        process = subprocess.run(command, cwd=collection_dir.parent, env=env, check=True,
                                 capture_output=True, text=True)  # fmt: skip
        times.append(time.perf_counter() - started)
        peak, user, system = process.stderr.strip().splitlines()[-1].split()
        peaks.append(int(peak) / 1024)
        cpu.append(float(user) + float(system))
    return {"median_s": statistics.median(times[1:]), "runs_s": times[1:],
            "median_cpu_s": statistics.median(cpu[1:]), "peak_mib": max(peaks[1:])}  # fmt: skip


def make_collection(folder: Path, model, weights_hash: str, dim: int, n: int) -> Path:
    """A collection of n random unit vectors made with this model (search cost is the same)."""
    directory = folder / ".retrieval"
    collection = Collection.create(directory, root=folder, model=model, dim=dim)
    collection.manifest.weights_hash = weights_hash
    collection.manifest.write(directory / "manifest.json")
    vectors = np.random.default_rng(2).normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with collection.locked(), collection.catalog.transaction():
        first = collection.catalog.reserve_rows(n)
        collection.store.write(first, vectors)
        for i in range(n):
            collection.catalog.put_ok(f"p{i:05d}.jpg", 1, 1, f"h{i}", 640, 480, first + i)
    with collection.locked():
        collection.sync_index()
    collection.close()
    return directory


def print_speed(result: dict) -> None:
    print(f"{'backend':<11} {'images/s b16':>12} {'(cores)':>8} {'b1':>7} {'texts/s b16':>12} "
          f"{'b1':>7} {'cos image':>10} {'cos text':>9}")  # fmt: skip
    for name, speed in result["speed"].items():
        b16, b1, cos = speed["batch 16"], speed["batch 1"], result["agreement"][name]
        print(f"{name:<11} {b16['images_per_s']:>12.1f} {b16['image_cores']:>8.2f} "
              f"{b1['images_per_s']:>7.1f} {b16['texts_per_s']:>12.1f} {b1['texts_per_s']:>7.1f} "
              f"{cos['image']:>10.6f} {cos['text']:>9.6f}")  # fmt: skip
    base = result["speed"]["torch fp32"]["batch 16"]["images_per_s"]
    int8 = result["speed"]["onnx int8"]["batch 16"]["images_per_s"]
    print(f"int8 image tower: {int8 / base:.2f}x torch fp32 (target >= 2.2x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo-model", type=Path, default=Path("demo/model"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved speed rounds")
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu_backends.json"))
    parser.add_argument(
        "--parts", default="speed,cold,recall",
        help="what to measure, comma-separated: speed (and agreement), cold, recall",
    )  # fmt: skip
    args = parser.parse_args()
    parts = set(args.parts.split(","))

    from retrieval.encoders.torch_encoder import import_torch

    import_torch()  # first, so that OpenMP's workers sleep when idle, as in the CLI
    import open_clip

    result: dict = {"cores": os.cpu_count(), "speed": {}, "agreement": {}, "recall": {},
                    "cold_search": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        os.environ.setdefault("RETRIEVAL_CACHE", str(Path(scratch) / "cache"))
        vit = create_untrained(open_clip.get_model_config("ViT-B-32"), Path(scratch) / "vitb32")
        reference = load_encoder(vit, device="cpu", backend="torch")
        encoders = {("torch", "fp32"): reference}
        # bf16 weights: fast on a CPU with AMX or AVX-512 BF16, slow without.
        encoders[("torch", "bf16")] = load_encoder(
            vit, device="cpu", backend="torch", precision="bf16"
        )
        for precision in ("fp32", "int8"):
            encoders[("onnx", precision)] = load_onnx_encoder(
                vit, precision=precision, weights_hash=reference.weights_hash
            )
        # Rounds interleave the backends, and each keeps its best round: this machine is shared,
        # and a neighbour's burst should not decide a ratio.
        for _ in range(args.rounds if "speed" in parts else 0):
            for key, encoder in encoders.items():
                name = " ".join(key)
                for b in (16, 1):
                    got = throughput(encoder, b, seconds=2.0)
                    best = result["speed"].setdefault(name, {}).setdefault(f"batch {b}", got)
                    if got["images_per_s"] > best["images_per_s"]:
                        best.update(
                            images_per_s=got["images_per_s"], image_cores=got["image_cores"]
                        )
                    best["texts_per_s"] = max(best["texts_per_s"], got["texts_per_s"])
        for key, encoder in encoders.items() if "speed" in parts else ():
            result["agreement"][" ".join(key)] = agreement(reference, encoder)
        collection = make_collection(Path(scratch) / "photos", vit, reference.weights_hash,
                                     reference.dim, args.items)  # fmt: skip
        del encoders, reference
        for backend, precision in COLD if "cold" in parts else ():
            result["cold_search"][f"{backend} {precision}"] = cold_search(
                collection, backend, precision, args.runs
            )
        if "recall" in parts and (args.demo_model / "open_clip_config.json").is_file():
            test = load_dataset("synthetic", split="test")
            demo = model_identity(f"local-dir:{args.demo_model}")
            for backend, precision in BACKENDS:
                report = run_benchmark(test, model=demo, device="cpu", backend=backend,
                                       precision=precision)  # fmt: skip
                result["recall"][f"{backend} {precision}"] = {
                    "text_to_image": report.text_to_image,
                    "image_to_text": report.image_to_text,
                }

    if result["speed"]:
        print_speed(result)
    if result["cold_search"]:
        print(
            f'\ncold `retrieval search "{QUERY}"` on {args.items:,} items (median of {args.runs}):'
        )
        for name, cold in result["cold_search"].items():
            print(f"  {name:<11} {cold['median_s']:.2f} s ({cold['median_cpu_s']:.2f} s of CPU), "
                  f"peak {cold['peak_mib']:.0f} MiB")  # fmt: skip
    if result["recall"]:
        print("\nrecall on synthetic:500/test with the demo model (T->I, I->T R@1/5/10):")
        for name, recall in result["recall"].items():
            cells = [
                "/".join(f"{100 * v:.2f}" for v in recall[d].values())
                for d in ("text_to_image", "image_to_text")
            ]
            print(f"  {name:<11} {cells[0]}   {cells[1]}")
    elif "recall" in parts:
        print(f"\n(no demo model in {args.demo_model}: recall skipped; run `make demo` first)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
