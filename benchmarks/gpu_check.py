"""The GPU check: FAISS search on the GPU against the CPU on the same data, then the model towers
(benchmarks/gpu_towers.py: bf16 throughput, and indexing JPEGs with CPU and with GPU decoding).

    python benchmarks/gpu_check.py                  # 10,000,000 x 512, about 3 minutes on an H200
    python benchmarks/gpu_check.py --n 2000000      # a quicker look

N clustered, L2-normalised float32 vectors of dimension 512 are drawn on the fly (on all cores),
and queries from the same mixture. It measures, through the engine's own GPU code
(`index.vector_index.to_gpu`, `index.ann.search_parameters`):

- flat: the engine's exact index (`index.ann.build("Flat")`), copied to the GPU; all queries in
  one GPU call, and a subset on the CPU (exact search of 10M vectors is slow there);
- IVF-Flat: trained and filled on the GPU, copied to the CPU so both search the very same lists,
  then copied back by the engine's `to_gpu`; searched with the same per-call nprobe on both;
- CAGRA, only where the installed faiss has `GpuIndexCagra` (cuVS), against exact search.

Agreement is the recall@k of the GPU's results against the CPU's, a GPU result outside the CPU's
list counting as agreeing when its score ties the CPU's k-th (within --tie). The check fails
(exit 1) when agreement is below --min-agreement. Prints a table and writes JSON under
benchmarks/results/. Without a GPU it says so in one line and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from index import ann, vector_index
from index._faiss import faiss

K = 10


def draw(n: int, dim: int, clusters: int, seed: int, spread: float = 0.6) -> np.ndarray:
    """n unit vectors (n, dim) float32: cluster centres plus Gaussian spread, drawn in parallel."""
    centres = np.random.default_rng([seed, 0]).standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), dtype=np.float32)
    step = 250_000
    seeds = np.random.SeedSequence([seed, 1]).spawn((n + step - 1) // step)

    def fill(part: int) -> None:
        rng = np.random.default_rng(seeds[part])
        rows = slice(part * step, min(n, (part + 1) * step))
        block = rng.standard_normal((rows.stop - rows.start, dim), dtype=np.float32)
        block *= np.float32(spread / dim**0.5)
        block += centres[rng.integers(0, clusters, len(block))]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[rows] = block

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(fill, range(len(seeds))))
    return out


def agreement(
    gpu: tuple[np.ndarray, np.ndarray], cpu: tuple[np.ndarray, np.ndarray], tie: float
) -> tuple[float, float]:
    """(tie-tolerant, plain) recall@k of the GPU's ids against the CPU's, on the same queries."""
    (gpu_scores, gpu_ids), (cpu_scores, cpu_ids) = gpu, cpu
    plain = tolerant = 0.0
    for gs, gi, cs, ci in zip(gpu_scores, gpu_ids, cpu_scores, cpu_ids, strict=True):
        same = np.isin(gi, ci)
        plain += same.mean()
        tolerant += (same | (gs >= cs[-1] - tie)).mean()
    return tolerant / len(gpu_ids), plain / len(gpu_ids)


def timed(search: Callable[[np.ndarray], tuple], queries: np.ndarray) -> tuple[tuple, float]:
    """(results, queries per second) of one call over all queries, after a warm-up."""
    search(queries[:8])
    started = time.perf_counter()
    result = search(queries)
    return result, len(queries) / (time.perf_counter() - started)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def flat_section(base: np.ndarray, queries: np.ndarray, args: argparse.Namespace) -> dict:
    log(f"flat: adding {len(base):,} vectors on the CPU, then copying them to the GPU")
    ids = np.arange(len(base), dtype=np.int64)
    cpu = ann.build("Flat", base, ids, dim=base.shape[1])
    started = time.perf_counter()
    gpu = vector_index.to_gpu(cpu, 0, RESOURCES)
    copy_s = time.perf_counter() - started
    log("flat: searching")
    gpu_result, gpu_qps = timed(lambda q: vector_index.search(gpu, q, K), queries)
    subset = queries[: args.cpu_queries]
    cpu_result, cpu_qps = timed(lambda q: vector_index.search(cpu, q, K), subset)
    tolerant, plain = agreement(tuple(r[: len(subset)] for r in gpu_result), cpu_result, args.tie)
    return {
        "index": "Flat",
        "copy_to_gpu_s": copy_s,
        "gpu_qps": gpu_qps,
        "gpu_queries": len(queries),
        "cpu_qps": cpu_qps,
        "cpu_queries": len(subset),
        "agreement": tolerant,
        "plain_overlap": plain,
    }


def ivf_section(base: np.ndarray, queries: np.ndarray, args: argparse.Namespace) -> dict:
    n, dim = base.shape
    lists = ann.ivf_lists(n)
    factory = f"IVF{lists},Flat"
    log(f"ivf: training {factory} on the GPU and adding {n:,} vectors there")
    started = time.perf_counter()
    empty = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    trainer = vector_index.to_gpu(empty, 0, RESOURCES)
    sample = np.random.default_rng(0).choice(n, size=ann.training_size(factory, n), replace=False)
    trainer.train(base[np.sort(sample)])
    for start in range(0, n, 1_000_000):
        chunk = base[start : start + 1_000_000]
        trainer.add_with_ids(chunk, np.arange(start, start + len(chunk), dtype=np.int64))
    build_s = time.perf_counter() - started
    cpu = faiss.index_gpu_to_cpu(trainer)  # the very same lists, for the CPU
    del trainer
    log("ivf: copying the CPU index to the GPU through the engine")
    started = time.perf_counter()
    gpu = vector_index.to_gpu(cpu, 0, RESOURCES)
    copy_s = time.perf_counter() - started
    params = {"nprobe": args.nprobe}
    log(f"ivf: searching, nprobe {args.nprobe}")
    gpu_result, gpu_qps = timed(lambda q: vector_index.search(gpu, q, K, None, params), queries)
    cpu_result, cpu_qps = timed(lambda q: vector_index.search(cpu, q, K, None, params), queries)
    tolerant, plain = agreement(gpu_result, cpu_result, args.tie)
    return {
        "index": factory,
        "nprobe": args.nprobe,
        "build_on_gpu_s": build_s,
        "copy_to_gpu_s": copy_s,
        "gpu_qps": gpu_qps,
        "gpu_queries": len(queries),
        "cpu_qps": cpu_qps,
        "cpu_queries": len(queries),
        "agreement": tolerant,
        "plain_overlap": plain,
    }


def cagra_section(base: np.ndarray, queries: np.ndarray, args: argparse.Namespace) -> dict | None:
    """CAGRA (cuVS) on the first --cagra-n vectors against exact search; None without cuVS."""
    if not hasattr(faiss, "GpuIndexCagra"):
        return None
    subset = base[: args.cagra_n]
    log(f"cagra: building a graph over {len(subset):,} vectors")
    started = time.perf_counter()
    index = faiss.GpuIndexCagra(RESOURCES[0], subset.shape[1], faiss.METRIC_INNER_PRODUCT)
    index.train(subset)
    build_s = time.perf_counter() - started
    exact = vector_index.to_gpu(faiss.IndexFlatIP(subset.shape[1]), 0, RESOURCES)
    exact.add(subset)
    truth = exact.search(queries, K)
    result, qps = timed(lambda q: index.search(q, K), queries)
    tolerant, plain = agreement(result, truth, args.tie)
    return {
        "index": f"CAGRA ({len(subset):,} vectors)",
        "build_on_gpu_s": build_s,
        "gpu_qps": qps,
        "gpu_queries": len(queries),
        "recall_against_exact": tolerant,
        "plain_overlap": plain,
    }


def towers_section(args: argparse.Namespace) -> dict | None:
    """The model part (benchmarks/gpu_towers.py): ViT-B-32 and ViT-L-14 in bf16 on ready
    tensors, the text tower, and indexing JPEG files with CPU and with GPU decoding. Its parts
    record their own failures; --skip-towers leaves it out."""
    if args.skip_towers:
        return None
    import gpu_towers

    towers_args = argparse.Namespace(
        device="cuda", models=list(gpu_towers.MODELS), batch=256, seconds=args.tower_seconds,
        files=args.files,
    )  # fmt: skip
    log("model towers: ViT-B-32 and ViT-L-14, then indexing JPEG files")
    result = gpu_towers.run(towers_args)
    gpu_towers.print_table(result)
    return result


RESOURCES: dict[int, faiss.StandardGpuResources] = {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000_000, help="base vectors (at least 10M)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=10_000, help="queries, one GPU call")
    parser.add_argument("--cpu-queries", type=int, default=200, help="queries for CPU flat")
    parser.add_argument("--clusters", type=int, default=20_000)
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--cagra-n", type=int, default=1_000_000)
    parser.add_argument("--tie", type=float, default=1e-4, help="scores this close are ties")
    parser.add_argument("--min-agreement", type=float, default=0.999)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-towers", action="store_true", help="FAISS only")
    parser.add_argument("--tower-seconds", type=float, default=8.0, help="per tower figure")
    parser.add_argument("--files", type=int, default=1000, help="JPEGs indexed end to end")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_check.json"))
    args = parser.parse_args()

    gpus = vector_index.gpu_count()
    if gpus == 0:
        print(f"gpu_check: faiss {faiss.__version__} sees no GPU; nothing was measured")
        return 2
    wall = time.perf_counter()
    log(f"drawing {args.n:,} + {args.queries:,} vectors of dimension {args.dim}")
    started = time.perf_counter()
    base = draw(args.n, args.dim, args.clusters, args.seed)
    queries = draw(args.queries, args.dim, args.clusters, args.seed + 1)
    data_s = time.perf_counter() - started
    rows = [flat_section(base, queries, args), ivf_section(base, queries, args)]
    try:
        cagra = cagra_section(base, queries, args)
    except RuntimeError as e:  # cuVS present but this build or metric refused: say so
        log(f"cagra: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        cagra = None
    if cagra:
        rows.append(cagra)
    del base
    towers = towers_section(args)

    print(f"N = {args.n:,}, dim = {args.dim}, k = {K}; {gpus} GPU(s), {os.cpu_count()} cores")
    header = (
        f"{'index':<24} {'GPU QPS':>10} {'(queries)':>10} {'CPU QPS':>10} {'(queries)':>10} "
        f"{'agreement':>10} {'plain':>7}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        cpu_qps = f"{row['cpu_qps']:>10.1f} {row['cpu_queries']:>10,}" if "cpu_qps" in row else (
            f"{'-':>10} {'-':>10}"
        )  # fmt: skip
        agreed = row.get("agreement", row.get("recall_against_exact"))
        print(
            f"{row['index']:<24} {row['gpu_qps']:>10.1f} {row['gpu_queries']:>10,} {cpu_qps} "
            f"{agreed:>10.4f} {row['plain_overlap']:>7.4f}"
        )
    if towers is None:
        print("model towers: skipped (--skip-towers)")
    failed = [r["index"] for r in rows if r.get("agreement", 1.0) < args.min_agreement]
    total_s = time.perf_counter() - wall
    print(f"wall time {total_s:.0f} s (data {data_s:.0f} s)")
    result = {
        "n": args.n,
        "dim": args.dim,
        "k": K,
        "rows": rows,
        "towers": towers,
        "min_agreement": args.min_agreement,
        "failed": failed,
        "seconds": {"data": data_s, "total": total_s},
        "machine": {
            "gpus": gpus,
            "cores": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(),
            "faiss": faiss.__version__,
            "cuvs": hasattr(faiss, "GpuIndexCagra"),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    if failed:
        print(f"FAILED: GPU results disagree with the CPU's for {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
