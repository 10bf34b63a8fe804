"""Where one `retrieval index` run of new photos into a new collection spends its time.

    python benchmarks/index_timeline.py FOLDER --model local-dir:MODEL [--n 48] [--cache DIR]

Runs the real command in this process (a fresh collection in a scratch folder, the photos
hard-linked there) with each step wrapped in perf_counter stamps, and prints, per step, when it
first started and last ended (seconds from process start), how many times it ran, its summed
time, the CPU time of the thread that called it (ONNX Runtime's own pool threads are not in
it) and the threads it ran on. Process start is read from /proc, so interpreter start-up and
imports are counted. Not part of the test suite; numbers are wall times on a shared machine.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

STARTED = time.perf_counter()
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def process_age() -> float:
    """Seconds since this process started (from /proc), to count interpreter start-up too."""
    ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - ticks / os.sysconf("SC_CLK_TCK")


OFFSET = process_age()  # seconds between process start and STARTED
SPANS: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
CPU: dict[str, float] = defaultdict(float)  # CPU seconds of the calling thread, per step

STEPS = [
    ("index.collection.Collection", "open_or_create", "collection created"),
    ("retrieval.indexer", "load_encoder", "encoder loaded (no session)"),
    ("retrieval.indexer", "scan", "scan"),
    ("retrieval.indexer._IndexRun", "_plan", "plan"),
    ("retrieval.pipeline", "read_image_file", "read file"),
    ("retrieval.pipeline", "content_hash", "SHA-256"),
    ("retrieval.pipeline", "decode_image", "decode (draft)"),
    ("retrieval.pipeline", "capture_from_image", "EXIF capture"),
    ("retrieval.encoders.onnx_encoder.OnnxEncoder", "prepare", "resize and crop"),
    ("retrieval.encoders.onnx_encoder.OnnxEncoder", "_load_session", "ORT session created"),
    ("retrieval.encoders.onnx_encoder.OnnxEncoder", "encode_images", "encode batch"),
    ("retrieval.indexer._IndexRun", "_store", "store batch"),
    ("retrieval.indexer", "fill_capture_times", "fill capture times"),
    ("index.collection.Collection", "sync_index", "faiss sync"),
]


def wrap(target: str, name: str, label: str) -> None:
    """Replace target.name (target: a module, or module.Class) by a version that stamps itself."""
    try:
        owner = importlib.import_module(target)
    except ImportError:
        module, _, cls = target.rpartition(".")
        owner = getattr(importlib.import_module(module), cls, None)
    function = getattr(owner, name, None)
    if function is None:
        print(f"(no {target}.{name} to time)", file=sys.stderr)
        return

    @functools.wraps(function)
    def timed(*args, **kwargs):
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            SPANS[label].append((start, time.perf_counter(), threading.current_thread().name))
            CPU[label] += time.thread_time() - cpu

    setattr(owner, name, timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--model", required=True)
    parser.add_argument("--n", type=int, default=48, help="how many of the folder's JPEGs")
    parser.add_argument("--cache", type=Path, default=None, help="RETRIEVAL_CACHE to use")
    args = parser.parse_args()
    if args.cache:
        os.environ["RETRIEVAL_CACHE"] = str(args.cache)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    scratch = Path(tempfile.mkdtemp(prefix="timeline-"))
    photos = scratch / "photos"
    photos.mkdir()
    for path in sorted(args.folder.glob("*.jpg"))[: args.n]:
        os.link(path, photos / path.name)

    before_imports = time.perf_counter()
    import cli

    imported = time.perf_counter()
    for target, name, label in STEPS:
        wrap(target, name, label)
    from typer.testing import CliRunner

    runner_start = time.perf_counter()
    result = CliRunner().invoke(cli.app, ["index", str(photos), "--model", args.model])
    finished = time.perf_counter()
    if result.exit_code != 0:
        raise SystemExit(result.output)
    shutil.rmtree(scratch)

    def at(t: float) -> float:
        return t - STARTED + OFFSET

    print(f"process start to script start (interpreter, numpy, PIL): {OFFSET:.3f} s")
    print(f"import cli: {at(before_imports):.3f} -> {at(imported):.3f} s")
    print(f"command: {at(runner_start):.3f} -> {at(finished):.3f} s (total {at(finished):.3f} s)")
    print(f"{'step':<30} {'first':>7} {'last':>7} {'calls':>5} {'sum s':>7} {'cpu s':>6}  threads")
    rows = sorted(SPANS.items(), key=lambda kv: min(s for s, _, _ in kv[1]))
    for label, spans in rows:
        first = min(s for s, _, _ in spans)
        last = max(e for _, e, _ in spans)
        total = sum(e - s for s, e, _ in spans)
        threads = len({t for _, _, t in spans})
        print(f"{label:<30} {at(first):>7.3f} {at(last):>7.3f} {len(spans):>5} {total:>7.3f} "
              f"{CPU[label]:>6.3f}  "
              f"{threads}")  # fmt: skip
    usage = os.times()
    print(f"CPU: user {usage.user:.2f} s, system {usage.system:.2f} s; "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
