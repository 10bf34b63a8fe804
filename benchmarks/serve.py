"""The web app under load: text-search latency with the model warm, and requests per second.

    python benchmarks/serve.py [--items 100000] [--clients 8] [--seconds 20]
    python benchmarks/serve.py --cluster local:4 --shards 2 [--replicas 1] [--items 100000]

Builds a collection of --items synthetic clustered 512-d vectors (paths spread over 100 folders;
the index is what `--auto` picks for that size, tuned as usual), starts `retrieval serve` on it
as a user would (ViT-B-32 with random weights, the CPU default backend, its export made first),
and measures over loopback:
  - one client: latency of text searches (p50, p95), split into encoding and searching by the
    Server-Timing header; and of "more like this" searches, which encode nothing,
  - --clients concurrent clients for --seconds: requests per second and latency.
The clients run on the same machine as the server, so on a small machine they compete with it.
Prints a table and writes benchmarks/results/serve.json.

With --cluster, the same collection is served twice, by one process and by `retrieval serve
--cluster ... --shards K` (its image index split into K Ray Serve parts), and the same queries
are timed against both (results in benchmarks/results/serve_cluster.json): what the fan-out to
the parts and the merge cost on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from index.collection import Collection

WORDS = ["dog", "beach", "cat", "mountain", "car", "night", "city", "snow", "river", "child",
         "bicycle", "sunset", "tree", "boat"]  # fmt: skip


def queries(n: int) -> list[str]:
    """Distinct short sentences, so that nothing can be answered from a cache."""
    rng = np.random.default_rng(0)
    return [f"a {' '.join(rng.choice(WORDS, 3))} photo {i}" for i in range(n)]


def make_collection(folder: Path, model, weights_hash: str, n: int, dim: int = 512) -> Path:
    """n unit vectors in 1,000 Gaussian clusters (real embeddings cluster too), in 100 folders."""
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(1000, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, 1000, n)] + 0.6 * rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    directory = folder / ".retrieval"
    collection = Collection.create(directory, root=folder, model=model, dim=dim)
    collection.manifest.weights_hash = weights_hash
    collection.manifest.write(directory / "manifest.json")
    with collection.locked(), collection.catalog.transaction():
        first = collection.catalog.reserve_rows(n)
        collection.store.write(first, vectors)
        for i in range(n):
            path = f"folder{i % 100:02d}/p{i:06d}.jpg"
            collection.catalog.put_ok(path, 1, 1, f"h{i}", 640, 480, first + i)
    with collection.locked():
        collection.sync_index()
    collection.close()
    return directory


def start_server(
    directory: Path, env: dict[str, str], options: tuple[str, ...] = ()
) -> tuple[subprocess.Popen, str, float]:
    retrieval = str(Path(sys.executable).parent / "retrieval")
    started = time.perf_counter()
    server = subprocess.Popen(
        [retrieval, "serve", "--index", str(directory), "--port", "0", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    url = server.stdout.readline().strip()
    if not url.startswith("http://"):
        server.kill()
        raise SystemExit(f"retrieval serve did not start: {server.stderr.read()}")
    return server, url, time.perf_counter() - started


def timed_get(client: httpx.Client, url: str, params: dict) -> tuple[float, dict[str, float]]:
    started = time.perf_counter()
    response = client.get(url, params=params)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    steps = {}
    for entry in response.headers.get("server-timing", "").split(","):
        if ";dur=" in entry:
            name, duration = entry.strip().split(";dur=")
            steps[name] = float(duration)
    return elapsed * 1000, steps


def percentiles(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    return {
        "p50_ms": statistics.median(ordered),
        "p95_ms": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "n": len(ordered),
    }


def one_client(url: str, n: int) -> dict:
    with httpx.Client(base_url=url, timeout=60) as client:
        for text in queries(5):  # warm the connection and any first-call paths
            timed_get(client, "api/search", {"q": text, "k": 24})
        text_ms, encode_ms, search_ms = [], [], []
        for text in queries(n):
            elapsed, steps = timed_get(client, "api/search", {"q": text, "k": 24})
            text_ms.append(elapsed)
            encode_ms.append(steps.get("encode", 0.0))
            search_ms.append(steps.get("search", 0.0))
        similar_ms = [
            timed_get(client, f"api/items/{item_id}/similar", {"k": 24})[0]
            for item_id in np.random.default_rng(4).integers(1, 1000, n)
        ]
    return {
        "text_search": percentiles(text_ms),
        "encode_ms_p50": statistics.median(encode_ms),
        "search_ms_p50": statistics.median(search_ms),
        "similar": percentiles(similar_ms),
    }


def many_clients(url: str, clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client_loop(number: int) -> None:
        texts = queries(10_000)[number::clients]
        with httpx.Client(base_url=url, timeout=60) as client:
            for text in texts:
                if time.perf_counter() >= stop:
                    return
                try:
                    elapsed, _ = timed_get(client, "api/search", {"q": text, "k": 24})
                except httpx.HTTPError as e:
                    with lock:
                        errors.append(str(e))
                    continue
                with lock:
                    latencies.append(elapsed)

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {
        "clients": clients,
        "seconds": wall,
        "requests_per_s": len(latencies) / wall,
        "errors": len(errors),
        **percentiles(latencies),
    }


def _figures(latency: dict) -> tuple[float, float, float]:
    """p50, p95 and the requests/s one client gets back to back."""
    return latency["p50_ms"], latency["p95_ms"], 1000 / latency["p50_ms"]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measured(directory: Path, env: dict[str, str], args, options: tuple[str, ...] = ()) -> dict:
    """One server's figures: start-up, one client's latencies, many clients', peak memory."""
    server, url, startup_s = start_server(directory, env, options)
    try:
        single = one_client(url, args.requests)
        load = many_clients(url, args.clients, args.seconds)
        rss = peak_rss_mib(server.pid)
    finally:
        server.send_signal(signal.SIGINT)  # as Ctrl-C: a sharded server removes its parts
        server.wait(timeout=60)
    return {"startup_s": startup_s, "peak_rss_mib": rss, "single_client": single, "load": load}


def compare_cluster(directory: Path, env: dict[str, str], args) -> None:
    """The same queries against one process and against the sharded server; table and JSON."""
    options = ("--cluster", args.cluster, "--shards", str(args.shards),
               "--replicas", str(args.replicas))  # fmt: skip
    runs = {
        "single": measured(directory, env, args),
        "sharded": measured(directory, env, args, options),
    }
    result = {"cores": os.cpu_count(), "items": args.items, "cluster": args.cluster,
              "shards": args.shards, "replicas": args.replicas, **runs}  # fmt: skip
    print(f"{args.items:,} items, {os.cpu_count()} cores; sharded: --cluster {args.cluster} "
          f"--shards {args.shards} --replicas {args.replicas}")  # fmt: skip
    print(f"{'':<30}{'p50 ms':>9}{'p95 ms':>9}{'search p50':>12}{'req/s':>9}{'start s':>9}")
    for name, run in runs.items():
        text, load = run["single_client"]["text_search"], run["load"]
        print(f"{name + ', text search':<30}{text['p50_ms']:>9.1f}{text['p95_ms']:>9.1f}"
              f"{run['single_client']['search_ms_p50']:>12.1f}{load['requests_per_s']:>9.1f}"
              f"{run['startup_s']:>9.1f}")  # fmt: skip
        similar = run["single_client"]["similar"]
        print(f"{name + ', more like this':<30}{similar['p50_ms']:>9.1f}{similar['p95_ms']:>9.1f}")
    out = args.out or Path("benchmarks/results/serve_cluster.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200, help="single-client requests")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--cluster", default="none", help="also serve sharded: local:N, ...")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="the JSON file to write")
    args = parser.parse_args()

    from retrieval.encoders.torch_encoder import import_torch

    import_torch()
    import open_clip

    from retrieval.encoders import load_encoder, load_onnx_encoder
    from retrieval.encoders.torch_encoder import create_untrained

    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "RETRIEVAL_CACHE": f"{scratch}/cache"}
        os.environ["RETRIEVAL_CACHE"] = env["RETRIEVAL_CACHE"]
        vit = create_untrained(open_clip.get_model_config("ViT-B-32"), Path(scratch) / "vitb32")
        weights_hash = load_encoder(vit, device="cpu", backend="torch").weights_hash
        load_onnx_encoder(vit, precision="fp32", weights_hash=weights_hash)  # the export, cached
        started = time.perf_counter()
        directory = make_collection(Path(scratch) / "photos", vit, weights_hash, args.items)
        built_s = time.perf_counter() - started
        manifest = json.loads((directory / "manifest.json").read_text())
        if args.cluster != "none":
            compare_cluster(directory, env, args)
            return
        server, url, startup_s = start_server(directory, env)
        try:
            single = one_client(url, args.requests)
            load = many_clients(url, args.clients, args.seconds)
            rss = peak_rss_mib(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=30)

    result = {
        "cores": os.cpu_count(),
        "items": args.items,
        "factory": manifest["factory"],
        "search_params": manifest["search_params"],
        "collection_build_s": built_s,
        "server_startup_s": startup_s,
        "server_peak_rss_mib": rss,
        "single_client": single,
        "concurrent": load,
    }
    text, similar = single["text_search"], single["similar"]
    print(
        f"{args.items:,} items, index {result['factory']} {result['search_params']}, "
        f"{os.cpu_count()} cores; server up in {startup_s:.1f} s, peak {rss:.0f} MiB"
    )
    clients = f"text search, {args.clients} clients"
    rows = [
        ("text search, 1 client", *_figures(text)),
        ("  of which encode / search (p50)", single["encode_ms_p50"], single["search_ms_p50"]),
        ("more like this, 1 client", *_figures(similar)),
        (clients, load["p50_ms"], load["p95_ms"], load["requests_per_s"]),
    ]
    print(f"{'':<34}{'p50 ms':>9}{'p95 ms':>9}{'req/s':>9}")
    for label, *figures in rows:
        print(f"{label:<34}" + "".join(f"{figure:>9.1f}" for figure in figures))
    print(f"({load['errors']} errors under load)")
    out = args.out or Path("benchmarks/results/serve.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
