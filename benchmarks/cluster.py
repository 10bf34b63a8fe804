"""Indexing on a local Ray cluster against one process, on the same files and cores.

    python benchmarks/cluster.py                       # 160 JPEGs of 640x480, ViT-B-32
    python benchmarks/cluster.py --n 256 --clusters local:2 local:4 --shard-size 32
    python benchmarks/cluster.py --only-reindex --reindex-n 200000   # reindex time alone

For each way of running (`none`: the ordinary single process; `local:N`: a private Ray cluster
of N CPU slots on this machine) it indexes the same folder into fresh collections:
- Ray's start, on its own;
- end to end: a run on the cold cluster (its workers import the library and load the model);
  the slowest worker's first-task warm-up (model load and first batch) is reported on its own;
- steady: the same run again on the same cluster, whose workers hold the model (for one
  process: an encoder loaded and run before the run);
- a driver restart: a run stopped after half its files are committed, then run again (what the
  second run encodes and how long it takes).
Each run reports images/s and the CPU time of every process of the run (the driver, Ray's
processes and its workers: /proc), and its cost against one process in both. The machine may
be shared: the load average is printed, and CPU time is the figure that noise moves least.
Every task's phases (model load, waiting for decoding, encoding, writing) go to the JSON.
ViT-B-32 runs with random weights (speed does not depend on them), on ONNX Runtime.

Reindex: the time `reindex --factory IVF...,PQ64np` takes over --reindex-n stored synthetic
vectors of 512-d, in one process and with its lists filled by --clusters tasks (`reindex` in
the JSON; the search results of every build are checked equal to one process's).
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


def tree_cpu_seconds() -> float:
    """CPU time (user + system) of this process and every process under it that is alive now:
    Ray's own processes and its workers are started from this one (Linux /proc)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    tree, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(times.get(pid, 0.0) for pid in tree)


def run(root: Path, model, cluster: str, shard_size: int, stop_after: int | None = None,
        encoder=None) -> dict:  # fmt: skip
    def progress(event) -> None:
        if stop_after is not None and event.phase == "encode" and event.done >= stop_after:
            raise Stop

    shards: list = []
    options = {"encoder": encoder} if encoder is not None else {"on_shard": shards.append}
    if cluster == "none":
        options.pop("on_shard", None)
    cpu, started = tree_cpu_seconds(), time.perf_counter()
    try:
        report = index_on_cluster(root, cluster=cluster, shard_size=shard_size, model=model,
                                  backend="onnx", progress=progress, **options)  # fmt: skip
    except Stop:
        return {"stopped_after_s": round(time.perf_counter() - started, 2)}
    cpu = tree_cpu_seconds() - cpu
    result = {
        "encoded": report.encoded,
        "seconds": round(report.seconds, 2),
        "images_per_s": round(report.encoded / report.seconds, 2),
        "cpu_s": round(cpu, 2),
        "cpu_ms_per_image": round(1000 * cpu / report.encoded, 1),
    }
    if shards:
        result["tasks"] = [timeline(s) for s in sorted(shards, key=lambda s: s.started)]
    return result


def timeline(summary) -> dict:
    """A task's phases, as the worker measured them."""
    keys = ("pid", "warm", "files", "seconds", "load_s", "decode_wait_s", "encode_s", "write_s",
            "cpu_s", "cpu_before_s", "started", "ended")  # fmt: skip
    return {k: round(v, 3) if isinstance(v, float) else v for k in keys
            if (v := getattr(summary, k)) is not None}  # fmt: skip


def warmed_encoder(model):
    """The model loaded in this process, its image session made and run once: what a worker
    that has done a task holds, for the single process's steady rate."""
    from retrieval.encoders import load_encoder

    encoder = load_encoder(model, backend="onnx")
    encoder.encode_images(np.zeros((2, *encoder.image_size, 3), np.uint8))
    return encoder


def measure(cluster: str, files: Path, model, shard_size: int, work: Path,
            restart: bool = True) -> dict:  # fmt: skip
    """One way of running: a run on a cold cluster (end to end: workers start, import and load
    the model), a run on the same cluster again (steady: workers warm), then a run stopped
    half-way and run again."""
    import shutil

    result: dict = {"cluster": cluster}
    address = parse_cluster(cluster)
    started = time.perf_counter()
    with connected(address) if address.kind != "none" else _nothing():
        result["startup_s"] = round(time.perf_counter() - started, 2)
        for name in ("cold", "warm", "restart")[: 3 if restart else 2]:
            root = work / f"{cluster.replace(':', '-')}-{name}"
            shutil.copytree(files, root)
            if name == "cold":
                result["cold"] = run(root, model, cluster, shard_size)
            elif name == "warm":
                encoder = warmed_encoder(model) if cluster == "none" else None
                result["warm"] = run(root, model, cluster, shard_size, encoder=encoder)
            else:
                total = sum(1 for _ in files.iterdir())
                first = run(root, model, cluster, shard_size, stop_after=total // 2)
                again = run(root, model, cluster, shard_size)
                result["restart"] = {**first, "encoded_again": again["encoded"],
                                     "seconds_again": again["seconds"]}  # fmt: skip
            shutil.rmtree(default_dir(root), ignore_errors=True)
    cold = [t for t in result["cold"].get("tasks", []) if not t["warm"]]
    if cold:  # the first task of each worker: the process's start and imports, the model's load
        result["worker_start_cpu_s"] = round(max(t["cpu_before_s"] for t in cold), 2)
        result["first_task_load_s"] = round(max(t["load_s"] for t in cold), 2)
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
    parser.add_argument(
        "--shard-size",
        type=int,
        default=None,
        help="files per task (default: the cluster path's own choice)",
    )
    parser.add_argument("--clusters", nargs="+", default=["local:2", "local:4"])
    parser.add_argument("--no-restart", action="store_true", help="skip the driver restart runs")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cluster.json"))
    add_reindex_arguments(parser)
    args = parser.parse_args()
    if args.only_reindex:
        return record_reindex(args)
    width, height = map(int, args.size.split("x"))
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ.setdefault("RETRIEVAL_CACHE", str(work / "cache"))  # the ONNX export
        model = vit_b_32(work)
        warmed_encoder(model)  # exported to ONNX once, before anything is measured
        files = work / "files"
        make_jpegs(files, args.n, (width, height))
        rows = [measure(c, files, model, args.shard_size, work, not args.no_restart)
                for c in ["none", *args.clusters]]  # fmt: skip
    load = (load, os.getloadavg())
    for row in rows:
        for kind in ("cold", "warm"):
            base = rows[0][kind]
            row[kind]["cost"] = round(1 - row[kind]["images_per_s"] / base["images_per_s"], 3)
            row[kind]["cpu_cost"] = round(row[kind]["cpu_s"] / base["cpu_s"] - 1, 3)
    print_table(args, rows, load)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"n": args.n, "size": args.size, "shard_size": args.shard_size, "cpus": os.cpu_count(),
            "machine": platform.machine(), "model": "ViT-B-32, random weights",
            "load_average_before_after": load}  # fmt: skip
    args.out.write_text(json.dumps({"meta": meta, "runs": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")
    record_reindex(args)


# -- reindex --------------------------------------------------------------------------------------


def add_reindex_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reindex-n", type=int, default=200_000, help="stored vectors (0: skip)")
    parser.add_argument("--reindex-dim", type=int, default=512)
    parser.add_argument("--reindex-shard-size", type=int, default=25_000)
    parser.add_argument("--only-reindex", action="store_true", help="measure reindex alone")


def synthetic_collection(directory: Path, n: int, dim: int) -> Path:
    """n clustered unit vectors of dim stored float16, as n indexed images would leave them."""
    from index.collection import Collection, NewImage
    from index.manifest import ModelIdentity

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((256, dim)).astype(np.float32)
    collection = Collection.create(directory, root=directory.parent, model=ModelIdentity("m"),
                                   dim=dim)  # fmt: skip
    with collection, collection.locked():
        for start in range(0, n, 50_000):
            m = min(50_000, n - start)
            x = centres[rng.integers(0, 256, m)] + 0.8 * rng.standard_normal((m, dim))
            x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
            files = [NewImage(f"{i}.jpg", 1, 1, f"h{i}", 1, 1) for i in range(start, start + m)]
            collection.append_images(x, files)
    return directory


def measure_reindex(directory: Path, factory: str, cluster: str, shard_size: int) -> dict:
    """One reindex of the collection: seconds in all, and (on a cluster) training and filling."""
    import resource

    from index import vector_index
    from retrieval.cluster.reindexing import reindex_on_cluster

    marks: dict[str, float] = {}

    def progress(event) -> None:
        marks.setdefault(event.phase, time.perf_counter())

    address = parse_cluster(cluster)
    with connected(address) if address.kind != "none" else _nothing():
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        tuning = reindex_on_cluster(directory, cluster=cluster, factory=factory,
                                    shard_size=shard_size, progress=progress)  # fmt: skip
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
    index = vector_index.load(directory / "index.faiss")
    queries = np.random.default_rng(1).standard_normal((200, index.d)).astype(np.float32)
    _, found = vector_index.search(index, queries, 10, params={"nprobe": 16})
    row = {"cluster": cluster, "seconds": round(seconds, 2),
           "driver_cpu_s": round(after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime, 2),
           "recall": round(tuning.recall, 3), "found": found}  # fmt: skip
    if "shard" in marks:
        row["train_s"] = round(marks["shard"] - marks["train"], 2)
        row["fill_and_merge_s"] = round(marks.get("merge", marks["shard"]) - marks["shard"], 2)
    return row


def record_reindex(args: argparse.Namespace) -> None:
    """Measure reindex in one process and on each cluster; print it and add it to --out."""
    import tempfile

    from index.ann import ivf_lists

    if args.reindex_n <= 0:
        return
    n, dim = args.reindex_n, args.reindex_dim
    factory = f"IVF{ivf_lists(n)},PQ{dim // 8}np"
    with tempfile.TemporaryDirectory() as tmp:
        directory = synthetic_collection(Path(tmp) / "c", n, dim)
        rows = [measure_reindex(directory, factory, c, args.reindex_shard_size)
                for c in ["none", *args.clusters]]  # fmt: skip
    base = rows[0]
    for row in rows:
        row["speedup"] = round(base["seconds"] / row["seconds"], 2)
        row["same_results_as_none"] = bool(np.array_equal(row["found"], base["found"]))
    for row in rows:
        del row["found"]
    print(f"reindex {n:,} x {dim} ({factory}), {os.cpu_count()} cores, "
          f"{args.reindex_shard_size:,} vectors a task")  # fmt: skip
    print("{:10} {:>9} {:>8} {:>8} {:>10} {:>8} {:>6}".format(
        "cluster", "seconds", "train s", "fill s", "driver cpu", "speedup", "same"))  # fmt: skip
    for row in rows:
        print(f"{row['cluster']:10} {row['seconds']:9.2f} {row.get('train_s', 0):8.2f} "
              f"{row.get('fill_and_merge_s', 0):8.2f} {row['driver_cpu_s']:10.2f} "
              f"{row['speedup']:8.2f} {row['same_results_as_none']!s:>6}")  # fmt: skip
    result = json.loads(args.out.read_text()) if args.out.is_file() else {}
    result["reindex"] = {"n": n, "dim": dim, "factory": factory, "cpus": os.cpu_count(),
                         "shard_size": args.reindex_shard_size, "runs": rows}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote reindex to {args.out}")


def print_table(args, rows: list[dict], load) -> None:
    print(f"{args.n} JPEGs {args.size}, ViT-B-32 (random weights), ONNX Runtime, "
          f"{os.cpu_count()} cores, shards of {args.shard_size or 'the default size'}; "
          f"load average "
          f"{load[0][0]:.2f} before, {load[1][0]:.2f} after")  # fmt: skip
    print("end to end: a cold cluster (workers start, import, load the model); steady: the same "
          "cluster again. cost: images/s lost against one process; CPU cost: CPU time "
          "(every process of the run) above one process's")  # fmt: skip
    header = ("cluster", "start s", "warm-up s", "e2e img/s", "cost", "CPU cost",
              "steady img/s", "cost", "CPU cost", "CPU ms/img")  # fmt: skip
    print("{:9} {:>7} {:>9} {:>9} {:>6} {:>8} {:>12} {:>6} {:>8} {:>10}".format(*header))
    for row in rows:
        cold, warm = row["cold"], row["warm"]
        print(f"{row['cluster']:9} {row['startup_s']:7.2f} {row.get('first_task_load_s', 0):9.2f} "
              f"{cold['images_per_s']:9.2f} {cold['cost']:6.1%} {cold['cpu_cost']:8.1%} "
              f"{warm['images_per_s']:12.2f} {warm['cost']:6.1%} {warm['cpu_cost']:8.1%} "
              f"{warm['cpu_ms_per_image']:10.1f}")  # fmt: skip
    if "restart" in rows[0]:
        print("driver stopped after half the files, run again: encoded again / seconds")
        for row in rows:
            restart = row["restart"]
            print(
                f"{row['cluster']:9} {restart['encoded_again']:>5}/{args.n:<5} "
                f"{restart['seconds_again']:8.2f}"
            )


if __name__ == "__main__":
    main()
