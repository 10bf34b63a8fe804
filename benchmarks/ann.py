"""Approximate nearest-neighbour indexes against exact search on a million clustered vectors.

    python benchmarks/ann.py                      # 1,000,000 x 512 (HNSW left out above 200,000)
    python benchmarks/ann.py --n 100000           # a quicker run, HNSW included
    python benchmarks/ann.py --memory 600000000   # let the automatic choice fit 600 MB
    python benchmarks/ann.py --skip hnsw ivf-pq

The vectors are synthetic, L2-normalised float32 of dimension 512, searched by inner product:
a mixture of clusters (a few thousand centres, themselves grouped around a few dozen broader
topics), each point its centre plus a spread along a 16-dimensional subspace of its own plus a
little isotropic noise, so that neighbours are near in a low-dimensional way, as embeddings are,
and the clusters overlap enough that partitioning them is not trivial. The queries are drawn
from the same mixture and are not in the base. Ground truth is exact top-10 by
faiss.IndexFlatIP.

For Flat (exact), IVF-Flat, IVF-PQ, HNSW32 and the automatic choice (`index.ann.choose_factory`)
it measures the build time (training and adding, through `index.ann.build`), the serialised
size and `index.ann.index_bytes`'s estimate of it (an index is loaded whole, so this is the
memory a search holds), queries per second one query at a time and in one batch of 1,024, and
recall@1 and recall@10 against exact search. The search depth of IVF and HNSW (nprobe,
efSearch) is tuned by `index.tuning.tune` to a recall@10 of 0.95 on the base's own vectors and
passed per call. For compressed codes (IVF-PQ) tuning also picks how many candidates per result
are re-ranked exactly from the base vectors, as the engine re-ranks from the stored embeddings;
the "codes" column is the recall the codes alone reach at that depth. OpenMP waits passively
(OMP_WAIT_POLICY=PASSIVE unless set), as in the engine. Prints a table and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

# OpenMP threads that spin after a batch search slow the next single queries down by 10-30x on
# 2 cores; the engine asks for passive waiting too (retrieval.encoders.torch_encoder.import_torch).
# It only takes effect before faiss's first import; a user's setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import faiss
import numpy as np

from index import ann
from index.inspect import depth_parameter
from index.tuning import tune

K = 10
NAMES = ("flat", "ivf-flat", "ivf-pq", "hnsw", "auto")
LABELS = {
    "flat": "Flat",
    "ivf-flat": "IVF-Flat",
    "ivf-pq": "IVF-PQ",
    "hnsw": "HNSW",
    "auto": "auto",
}


@dataclasses.dataclass(frozen=True)
class Mixture:
    """The cluster mixture both the base and the queries are drawn from."""

    centres: np.ndarray  # (clusters, dim), unit norm
    bases: np.ndarray  # (clusters, rank, dim): each cluster's own subspace
    spreads: np.ndarray  # (clusters,): standard deviation along each subspace direction
    weights: np.ndarray  # (clusters,): mixture weights, summing to 1
    noise: float  # norm of the isotropic noise

    @classmethod
    def make(
        cls, dim: int, clusters: int, topics: int, rank: int, spread: float, noise: float, seed: int
    ) -> Mixture:
        rng = np.random.default_rng([seed, 0])
        topic = _unit(rng.standard_normal((topics, dim), dtype=np.float32))
        centres = topic[rng.integers(0, topics, clusters)]
        # Clusters of one topic have centres about 0.5 apart in inner product; others about 0.
        centres += rng.standard_normal((clusters, dim), dtype=np.float32) / np.float32(dim**0.5)
        bases = rng.standard_normal((clusters, rank, dim), dtype=np.float32)
        bases /= np.float32(dim**0.5)
        spreads = spread * rng.uniform(0.5, 1.5, clusters) / rank**0.5
        weights = rng.lognormal(0.0, 0.5, clusters)
        return cls(
            _unit(centres), bases, spreads.astype(np.float32), weights / weights.sum(), noise
        )

    def draw(self, count: int, rng: np.random.Generator, out: np.ndarray | None = None):
        """count vectors (count, dim) float32, unit norm, cluster by cluster into out."""
        clusters, rank, dim = self.bases.shape
        out = np.empty((count, dim), np.float32) if out is None else out
        labels = rng.choice(clusters, size=count, p=self.weights)
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], np.arange(clusters + 1))
        noise = np.float32(self.noise / dim**0.5)
        for c in range(clusters):
            rows = order[bounds[c] : bounds[c + 1]]
            if len(rows) == 0:
                continue
            z = rng.standard_normal((len(rows), rank), dtype=np.float32) * self.spreads[c]
            x = z @ self.bases[c]
            x += self.centres[c]
            x += rng.standard_normal((len(rows), dim), dtype=np.float32) * noise
            out[rows] = _unit(x)
        return out


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def serialised_bytes(index: faiss.Index) -> int:
    """The size of the index as faiss.write_index writes it (to disk, not a copy in memory)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "index.faiss")
        faiss.write_index(index, path)
        return os.path.getsize(path)


def measure(
    index: faiss.Index,
    params: faiss.SearchParameters | None,
    queries: np.ndarray,
    truth: np.ndarray,
    single: int,
    refine: int,
    base: np.ndarray,
) -> dict[str, float]:
    """QPS one query at a time (the first `single` queries) and in one batch; recall@1, @10.

    refine > 0: K * refine candidates re-ranked exactly from the base vectors, as the engine
    re-ranks from the stored embeddings."""

    def search(q: np.ndarray) -> np.ndarray:
        _, found = index.search(q, K * max(refine, 1), params=params)
        return ann.rerank(q, found, lambda ids: base[ids], K)[1] if refine else found

    search(queries[:1])  # warm-up
    started = time.perf_counter()
    for query in queries[:single]:
        search(query[None, :])
    qps_1 = min(single, len(queries)) / (time.perf_counter() - started)
    started = time.perf_counter()
    found = search(queries)
    qps_batch = len(queries) / (time.perf_counter() - started)
    recall_10 = np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth, strict=True)])
    return {
        "qps_batch_1": qps_1,
        f"qps_batch_{len(queries)}": qps_batch,
        "recall_at_1": float(np.mean(found[:, 0] == truth[:, 0])),
        "recall_at_10": float(recall_10),
    }


def bench_one(
    name: str,
    factory: str,
    base: np.ndarray,
    ids: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray,
    args: argparse.Namespace,
) -> dict:
    dim = base.shape[1]
    log(f"{LABELS[name]}: building {factory}")
    started = time.perf_counter()
    index = ann.build(factory, base, ids, dim=dim)
    build_s = time.perf_counter() - started
    size = serialised_bytes(index)
    tuning = None
    params = None
    tune_s = 0.0
    if depth_parameter(index) is not None:
        log(f"{LABELS[name]}: built in {build_s:.1f} s; tuning")
        started = time.perf_counter()
        tuning = tune(index, base, ids, target_recall=args.target)
        tune_s = time.perf_counter() - started
        params = ann.search_parameters(index, tuning.search_params(), None)
    log(f"{LABELS[name]}: measuring")
    refine = tuning.refine if tuning else 0
    without = {}
    if refine:  # what the codes alone reach at the same depth
        codes_only = measure(index, params, queries, truth, 0, 0, base)
        without = {"recall_at_10_codes_only": codes_only["recall_at_10"]}
    row = {
        "name": LABELS[name],
        "factory": factory,
        "build_s": build_s,
        "bytes": size,
        "estimated_bytes": ann.index_bytes(factory, len(base), dim),
        **measure(index, params, queries, truth, args.single, refine, base),
        **without,
        "refine": refine,
        "parameter": tuning.parameter if tuning else None,
        "value": tuning.value if tuning else None,
        "tune_s": tune_s,
        "tuning": dataclasses.asdict(tuning) if tuning else None,
    }
    del index, params
    gc.collect()
    return row


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def byte_count(text: str) -> int:
    """Bytes, with an optional binary suffix: 600000000, 512M, 2G."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="base vectors")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1024, help="held-out queries (one batch)")
    parser.add_argument("--single", type=int, default=200, help="queries timed one at a time")
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--topics", type=int, default=64, help="groups of related clusters")
    parser.add_argument("--rank", type=int, default=16, help="dimensions of a cluster's spread")
    parser.add_argument("--spread", type=float, default=1.2, help="a cluster's extent (norm)")
    parser.add_argument("--noise", type=float, default=0.3, help="isotropic noise (norm)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pq", type=int, default=64, help="bytes per IVF-PQ code")
    parser.add_argument("--target", type=float, default=0.95, help="recall@10 to tune for")
    parser.add_argument(
        "--memory", type=byte_count, default=None, help="memory budget of the automatic choice"
    )
    parser.add_argument("--skip", nargs="+", default=[], choices=NAMES, help="indexes to leave out")
    parser.add_argument(
        "--hnsw-max",
        type=int,
        default=200_000,
        help="build HNSW only up to this many vectors (its construction is slow on few cores)",
    )
    parser.add_argument(
        "--rebuild-auto",
        action="store_true",
        help="build the automatic choice even when it is an index already measured",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ann.json"))
    args = parser.parse_args()

    wall = time.perf_counter()
    wait_policy = os.environ.get("OMP_WAIT_POLICY")
    n, dim = args.n, args.dim
    log(f"drawing {n:,} + {args.queries:,} vectors of dimension {dim}")
    started = time.perf_counter()
    mixture = Mixture.make(
        dim, args.clusters, args.topics, args.rank, args.spread, args.noise, args.seed
    )
    base = mixture.draw(n, np.random.default_rng([args.seed, 1]))
    queries = mixture.draw(args.queries, np.random.default_rng([args.seed, 2]))
    ids = np.arange(n, dtype=np.int64)
    data_s = time.perf_counter() - started

    log("exact ground truth")
    started = time.perf_counter()
    exact = faiss.IndexFlatIP(dim)
    exact.add(base)
    scores, truth = exact.search(queries, K)
    truth_s = time.perf_counter() - started
    del exact
    gc.collect()

    lists = ann.ivf_lists(n)
    plan = ann.choose_factory(n, dim, args.memory)
    factories = {
        "flat": "Flat",
        "ivf-flat": f"IVF{lists},Flat",
        "ivf-pq": f"IVF{lists},PQ{args.pq}",
        "hnsw": "HNSW32",
        "auto": plan.factory,
    }
    rows = []
    for name in NAMES:
        skipped = None
        if name in args.skip:
            skipped = "skipped: --skip"
        elif name == "hnsw" and n > args.hnsw_max:
            skipped = (
                f"skipped: N > {args.hnsw_max:,} (--hnsw-max); HNSW construction on "
                f"{os.cpu_count()} cores would dominate the run"
            )
        if skipped:
            rows.append({"name": LABELS[name], "factory": factories[name], "skipped": skipped})
            continue
        same = [r for r in rows if r.get("factory") == plan.factory and "skipped" not in r]
        if name == "auto" and same and not args.rebuild_auto:
            rows.append({**same[0], "name": "auto", "same_as": same[0]["name"]})
            continue
        rows.append(bench_one(name, factories[name], base, ids, queries, truth, args))
        log(f"{LABELS[name]}: done")
    rows[-1]["reason"] = plan.reason
    batch = f"qps_batch_{len(queries)}"

    header = (
        f"{'index':<9} {'factory':<20} {'build s':>8} {'MiB':>8} {'est MiB':>8} "
        f"{'QPS b=1':>9} {'QPS b=' + str(len(queries)):>10} {'tuned':>18} {'R@1':>6} "
        f"{'R@10':>6} {'codes':>6}"
    )
    print(
        f"N = {n:,}, dim = {dim}, {len(queries):,} queries; {os.cpu_count()} cores, "
        f"{faiss.omp_get_max_threads()} faiss threads, OMP_WAIT_POLICY={wait_policy}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        if "skipped" in r:
            print(f"{r['name']:<9} {r['factory']:<20} {r['skipped']}")
            continue
        tuned = f"{r['parameter']}={r['value']}" if r["parameter"] else "-"
        tuned += f" rerank x{r['refine']}" if r.get("refine") else ""
        codes = r.get("recall_at_10_codes_only")
        print(
            f"{r['name']:<9} {r['factory']:<20} {r['build_s']:>8.1f} {r['bytes'] / 2**20:>8.1f} "
            f"{r['estimated_bytes'] / 2**20:>8.1f} "
            f"{r['qps_batch_1']:>9.1f} {r[batch]:>10.1f} {tuned:>18} "
            f"{r['recall_at_1']:>6.3f} {r['recall_at_10']:>6.3f} "
            f"{'-' if codes is None else format(codes, '.3f'):>6}"
        )
    auto = rows[-1]
    if "same_as" in auto:
        print(f"auto: {plan.factory} is the {auto['same_as']} index above, measured once")
    flat = rows[0]
    if "skipped" in auto or "skipped" in flat:
        print("auto: not compared with exact search (one of them was skipped)")
    else:
        speedup = auto["qps_batch_1"] / flat["qps_batch_1"]
        met = auto["recall_at_10"] >= 0.95 and speedup >= 10
        print(
            f"auto: recall@10 {auto['recall_at_10']:.3f} at {speedup:.1f}x the single-query "
            f"throughput of exact search (target: recall@10 >= 0.95 at >= 10x): "
            f"{'met' if met else 'NOT met'}"
        )
    total_s = time.perf_counter() - wall
    print(f"wall time {total_s:.0f} s (data {data_s:.0f} s, ground truth {truth_s:.0f} s)")

    result = {
        "n": n,
        "dim": dim,
        "queries": len(queries),
        "single_queries": min(args.single, len(queries)),
        "k": K,
        "metric": "inner product, L2-normalised vectors",
        "data": {
            "clusters": args.clusters,
            "topics": args.topics,
            "rank": args.rank,
            "spread": args.spread,
            "noise": args.noise,
            "seed": args.seed,
            "median_true_score_at_1": float(np.median(scores[:, 0])),
            "median_true_score_at_10": float(np.median(scores[:, K - 1])),
        },
        "target_recall": args.target,
        "memory_budget": args.memory,
        "auto": {"factory": plan.factory, "reason": plan.reason},
        "rows": rows,
        "tuning": {r["name"]: r.get("tuning") for r in rows if r.get("tuning")},
        "seconds": {"data": data_s, "ground_truth": truth_s, "total": total_s},
        "machine": {
            "cores": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(),
            "faiss": faiss.__version__,
            "faiss_threads": faiss.omp_get_max_threads(),
            "omp_wait_policy": wait_policy,
            "numpy": np.__version__,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
