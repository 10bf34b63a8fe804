"""Indexing on a local Ray cluster against one process, on the same files and cores.

    python benchmarks/cluster.py                       # 160 JPEGs of 640x480, ViT-B-32
    python benchmarks/cluster.py --n 400 --clusters local:2 local:4 --shard-size 50

For each way of running (`none`: the ordinary single process; `local:N`: a private Ray cluster
of N CPU slots on this machine) it indexes the same folder into a fresh collection and reports
images/s over the run (scan, shards, commits; Ray's start-up apart), the cluster path's cost
against one process, and the cost of a driver restart: a run stopped after half its files are
committed, then run again (what the second run encodes and how long it takes). ViT-B-32 runs
with random weights (speed does not depend on them), on ONNX Runtime. Prints a table and
writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from index.collection import default_dir
from retrieval.cluster import index_on_cluster, parse_cluster
from retrieval.cluster.address import connected
from retrieval.encoders.torch_encoder import create_untrained


def make_jpegs(folder: Path, n: int, size: tuple[int, int]) -> None:
    """n distinct camera-like JPEGs: smooth shapes and grain, a few bases, a mark per file."""
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    rng = np.random.default_rng(0)
    bases = []
    for _ in range(min(n, 8)):
        coarse = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC))
        grain = rng.integers(-12, 13, size=(height, width, 3))
        bases.append(np.clip(smooth + grain, 0, 255).astype(np.uint8))
    for i in range(n):
        pixels = bases[i % len(bases)].copy()
        pixels[: 8 + i % 32, : 8 + i // 32] = (i * 37) % 256
        Image.fromarray(pixels).save(folder / f"img{i:05d}.jpg", quality=90)


class Stop(Exception):
    """Raised from the progress callback to stop a run part-way, as a killed driver would."""


def vit_b_32(folder: Path):
    import open_clip

    return create_untrained(open_clip.get_model_config("ViT-B-32"), folder / "vit-b-32")


def run(root: Path, model, cluster: str, shard_size: int, stop_after: int | None = None) -> dict:
    def progress(event) -> None:
        if stop_after is not None and event.phase == "encode" and event.done >= stop_after:
            raise Stop

    started = time.perf_counter()
    try:
        report = index_on_cluster(root, cluster=cluster, shard_size=shard_size, model=model,
                                  backend="onnx", progress=progress)  # fmt: skip
    except Stop:
        return {"stopped_after_s": round(time.perf_counter() - started, 2)}
    return {
        "encoded": report.encoded,
        "seconds": round(report.seconds, 2),
        "images_per_s": round(report.encoded / report.seconds, 2),
    }


def measure(cluster: str, files: Path, model, shard_size: int, work: Path) -> dict:
    """One way of running: a full run, then a run stopped half-way and run again."""
    import shutil

    result: dict = {"cluster": cluster}
    address = parse_cluster(cluster)
    started = time.perf_counter()
    with connected(address) if address.kind != "none" else _nothing():
        result["startup_s"] = round(time.perf_counter() - started, 2)
        for name in ("full", "restart"):
            root = work / f"{cluster.replace(':', '-')}-{name}"
            shutil.copytree(files, root)
            if name == "full":
                result.update(run(root, model, cluster, shard_size))
            else:
                total = sum(1 for _ in files.iterdir())
                first = run(root, model, cluster, shard_size, stop_after=total // 2)
                again = run(root, model, cluster, shard_size)
                result["restart"] = {**first, "encoded_again": again["encoded"],
                                     "seconds_again": again["seconds"]}  # fmt: skip
            shutil.rmtree(default_dir(root), ignore_errors=True)
    return result


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=160, help="JPEG files")
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--shard-size", type=int, default=40)
    parser.add_argument("--clusters", nargs="+", default=["local:2", "local:4"])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cluster.json"))
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ.setdefault("RETRIEVAL_CACHE", str(work / "cache"))  # the ONNX export
        model = vit_b_32(work)
        files = work / "files"
        make_jpegs(files, args.n, (width, height))
        rows = [measure(c, files, model, args.shard_size, work) for c in ["none", *args.clusters]]
    base = rows[0]["images_per_s"]
    for row in rows:
        row["cost_vs_one_process"] = round(1 - row["images_per_s"] / base, 3)
    print(f"{args.n} JPEGs {args.size}, ViT-B-32 (random weights), ONNX Runtime, "
          f"{os.cpu_count()} cores, shards of {args.shard_size}")  # fmt: skip
    header = ("cluster", "start s", "images/s", "cost", "restart: encoded again", "s again")
    print("{:10} {:>8} {:>9} {:>7} {:>24} {:>8}".format(*header))
    for row in rows:
        restart = row["restart"]
        print(f"{row['cluster']:10} {row['startup_s']:8.2f} {row['images_per_s']:9.2f} "
              f"{row['cost_vs_one_process']:7.1%} {restart['encoded_again']:>17}/{args.n:<6} "
              f"{restart['seconds_again']:8.2f}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"n": args.n, "size": args.size, "shard_size": args.shard_size, "cpus": os.cpu_count(),
            "machine": platform.machine(), "model": "ViT-B-32, random weights"}  # fmt: skip
    args.out.write_text(json.dumps({"meta": meta, "runs": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
