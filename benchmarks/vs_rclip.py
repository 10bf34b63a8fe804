"""Ours against rclip 3.3.0, the same network on both sides, the same photos, one run.

    python benchmarks/vs_rclip.py [--photos 48] [--megapixels 12] [--searches 5]
    python benchmarks/vs_rclip.py --work DIR --search-only [--searches 11]

rclip is installed from PyPI into a scratch venv and set up offline: it reads
$RCLIP_DATADIR/ViT-B-32-256-datacomp_s34b_b86k/{visual,textual}.onnx (input "input", first
output the unnormalised embedding) and $RCLIP_DATADIR/tokenizer/bpe_simple_vocab_16e6.txt.gz.
Both get open_clip's ViT-B-32-256 with random weights (seed 0): ours as a local-dir: model whose
ONNX export is cached beforehand, rclip as those two files exported from the same torch model.

Each tool runs with its defaults on a new collection of N photos, then of 2N photos, then
searches cold (a fresh process, median of --searches). Peak memory is the largest sum of the
resident memory of the command's process tree, sampled every 20 ms. Prints a table with the
ratios and writes benchmarks/results/vs_rclip.json. Not part of the test suite.

--search-only reuses the N-photo collections of an earlier run in --work and measures only
cold searches, the two tools taking turns (so that a busy machine slows both alike), with
each search's CPU time (user + system) beside its wall time; it writes
benchmarks/results/vs_rclip_search.json.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RCLIP = "rclip==3.3.0"
RCLIP_MODEL = "ViT-B-32-256-datacomp_s34b_b86k"
QUERY = "a red car parked by the sea"
RESULTS = REPO / "benchmarks" / "results" / "vs_rclip.json"
SEARCH_RESULTS = REPO / "benchmarks" / "results" / "vs_rclip_search.json"


def install_rclip(venv: Path) -> Path:
    """rclip in a venv of its own (Python 3.11 to 3.13, as it requires); returns its command."""
    python = shutil.which("python3.11") or shutil.which("python3.12") or sys.executable
    if not (venv / "bin" / "rclip").exists():
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "-q", "-q"]
        subprocess.run([*pip, "install", "--disable-pip-version-check", RCLIP], check=True)
    return venv / "bin" / "rclip"


def make_model(work: Path) -> Path:
    """ViT-B-32-256 with random weights (seed 0) as a local-dir: model; returns the folder."""
    from retrieval.encoders.identity import model_identity
    from retrieval.encoders.torch_encoder import create_untrained, model_config

    folder = work / "model"
    if not (folder / "open_clip_config.json").is_file():
        config = model_config(model_identity("ViT-B-32-256", "none"))
        create_untrained(config, folder, seed=0)
    return folder


def export_for_rclip(model_folder: Path, datadir: Path) -> None:
    """The same weights in rclip's layout: visual.onnx, textual.onnx and the vocabulary."""
    import torch

    from retrieval.encoders.identity import model_identity
    from retrieval.encoders.tokenizer import vocabulary_file
    from retrieval.encoders.torch_encoder import create_model

    target = datadir / RCLIP_MODEL
    target.mkdir(parents=True, exist_ok=True)
    (datadir / "tokenizer").mkdir(exist_ok=True)
    shutil.copyfile(vocabulary_file(), datadir / "tokenizer" / vocabulary_file().name)
    if (target / "textual.onnx").is_file():
        return
    model, _ = create_model(model_identity(f"local-dir:{model_folder}"))
    model.eval()

    class Tower(torch.nn.Module):
        def __init__(self, encode) -> None:
            super().__init__()
            self.model, self.encode = model, encode

        def forward(self, x):
            return self.encode(x)

    samples = {
        "visual": (model.encode_image, torch.zeros(1, 3, 256, 256)),
        "textual": (model.encode_text, torch.zeros(1, 77, dtype=torch.int64)),
    }
    for name, (encode, sample) in samples.items():
        torch.onnx.export(
            Tower(encode), (sample,), str(target / f"{name}.onnx"), input_names=["input"],
            output_names=["output"], opset_version=17, dynamo=False,
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        )  # fmt: skip


def write_photos(folder: Path, count: int, megapixels: float, first: int = 0) -> None:
    """Photo-like JPEGs (smooth colour fields with edges and grain), distinct per index."""
    folder.mkdir(parents=True, exist_ok=True)
    width = int((megapixels * 1e6 * 4 / 3) ** 0.5)
    height = width * 3 // 4
    for i in range(first, first + count):
        path = folder / f"photo_{i:04d}.jpg"
        if path.exists():
            continue
        rng = np.random.default_rng(i)
        coarse = Image.fromarray(rng.integers(0, 256, (9, 12, 3), dtype=np.uint8))
        image = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC))
        grain = rng.integers(-6, 7, (height, width, 1), dtype=np.int16)
        image = np.clip(image + grain, 0, 255).astype(np.uint8)
        Image.fromarray(image).save(path, quality=90)


def read_through(folders: list[Path]) -> None:
    """Read every file under folders once, so that no measured run pays for the disk."""
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                with path.open("rb") as f:
                    while f.read(1 << 24):
                        pass


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and its descendants."""
    total, children = 0, {pid}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            parent, rss_pages = int(stat[1]), int(stat[21])
        except (OSError, IndexError, ValueError):
            continue
        if int(entry) == pid or parent in children:
            children.add(int(entry))
            total += rss_pages * os.sysconf("SC_PAGE_SIZE")
    return total


def measure(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, peak MiB of the process tree, stdout) of one run of command."""
    wall, peak, out, _ = measure_cpu(command, cwd, env)
    return wall, peak, out


def measure_cpu(
    command: list[str], cwd: Path, env: dict[str, str]
) -> tuple[float, float, str, float]:
    """As measure, plus the CPU seconds (user + system) of the command and its children."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(process.pid))
            done.wait(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    out, errors = process.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{errors[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, peak / 2**20, out, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=48)
    parser.add_argument("--megapixels", type=float, default=12.0)
    parser.add_argument("--searches", type=int, default=5)
    parser.add_argument("--work", type=Path, default=None, help="Keep the scratch files here.")
    parser.add_argument(
        "--search-only",
        action="store_true",
        help="Only cold searches, on the collections of an earlier run in --work.",
    )
    args = parser.parse_args()
    if args.search_only:
        if args.work is None:
            raise SystemExit("--search-only needs --work: the folder of an earlier run")
        search_only(args.work, args.photos, args.searches)
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="vs-rclip-"))
    work.mkdir(parents=True, exist_ok=True)
    rclip = install_rclip(work / "rclip-venv")
    model = make_model(work)
    export_for_rclip(model, work / "rclip-models")
    base = {k: v for k, v in os.environ.items() if k != "RETRIEVAL_INDEX"}
    base.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), RETRIEVAL_CACHE=str(work / "cache"))
    ours = [sys.executable, str(REPO / "cli.py")]
    # Our modules compiled beforehand, as pip leaves an installed package (and rclip's venv):
    # otherwise the first run after an edit compiles them, about a second of its time.
    compileall.compile_file(str(REPO / "cli.py"), quiet=1)
    for package in ("retrieval", "index"):
        compileall.compile_dir(str(REPO / package), quiet=1)
    subprocess.run([*ours, "export", "--model", f"local-dir:{model}"], env=base, check=True,
                   capture_output=True)  # fmt: skip
    rows: dict[str, dict[str, float]] = {}
    results: dict[str, list[str]] = {}
    for n in (args.photos, 2 * args.photos):
        write_photos(work / "pool", 2 * args.photos, args.megapixels)
        for tool in ("ours", "rclip"):
            folder = work / f"{tool}-{n}"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            for i in range(n):
                name = f"photo_{i:04d}.jpg"
                os.link(work / "pool" / name, folder / name)
            env = dict(base)
            if tool == "ours":
                command = [*ours, "index", str(folder), "--model", f"local-dir:{model}"]
                search = [*ours, "search", QUERY, "-k", "5", "--paths"]
            else:
                datadir = work / f"rclip-data-{n}"
                shutil.rmtree(datadir, ignore_errors=True)
                shutil.copytree(work / "rclip-models", datadir)
                env["RCLIP_DATADIR"] = str(datadir)
                command = [str(rclip), "--top", "5", "--filepath-only", QUERY]
                search = [str(rclip), "--no-indexing", "--top", "5", "--filepath-only", QUERY]
            # Both tools start with their model files and the photos in the page cache: rclip's
            # were just copied, ours would otherwise be read from disk on the first run.
            read_through([work / "cache" / "onnx", work / f"rclip-data-{n}", folder])
            wall, peak, _ = measure(command, folder, env)
            row = rows.setdefault(f"{tool} {n}", {})
            row.update(index_s=wall, index_peak_mib=peak)
            if n == args.photos:
                runs = [measure(search, folder, env) for _ in range(args.searches)]
                row["search_s"] = statistics.median(r[0] for r in runs)
                row["search_peak_mib"] = max(r[1] for r in runs)
                results[tool] = [Path(line).name for line in runs[0][2].split()]
            print(f"{tool} {n}: {row}", file=sys.stderr)
    report(rows, results, args, work)


def search_commands(work: Path, n: int) -> dict[str, tuple[list[str], Path, dict[str, str]]]:
    """(command, folder, environment) of a cold search for each tool, as main runs it."""
    base = {k: v for k, v in os.environ.items() if k != "RETRIEVAL_INDEX"}
    base.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), RETRIEVAL_CACHE=str(work / "cache"))
    ours = [sys.executable, str(REPO / "cli.py"), "search", QUERY, "-k", "5", "--paths"]
    rclip = [str(work / "rclip-venv" / "bin" / "rclip"), "--no-indexing", "--top", "5",
             "--filepath-only", QUERY]  # fmt: skip
    return {
        "ours": (ours, work / f"ours-{n}", base),
        "rclip": (
            rclip,
            work / f"rclip-{n}",
            {**base, "RCLIP_DATADIR": str(work / f"rclip-data-{n}")},
        ),
    }


def search_only(work: Path, n: int, searches: int) -> None:
    """Cold searches only, the tools taking turns; prints a table and writes its JSON."""
    commands = search_commands(work, n)
    for _, folder, _ in commands.values():
        if not folder.is_dir():
            raise SystemExit(
                f"{folder} is missing: run the whole benchmark with --work {work} first"
            )
    runs: dict[str, list[tuple[float, float, str, float]]] = {tool: [] for tool in commands}
    for _ in range(searches):
        for tool, (command, folder, env) in commands.items():
            runs[tool].append(measure_cpu(command, folder, env))
    rows = {
        tool: {
            "wall_s": statistics.median(r[0] for r in done),
            "cpu_s": statistics.median(r[3] for r in done),
            "peak_mib": max(r[1] for r in done),
            "top5": [Path(line).name for line in done[0][2].split()],
        }
        for tool, done in runs.items()
    }
    ours, theirs = rows["ours"], rows["rclip"]
    print(
        f"| cold search, median of {searches}, taking turns | ours | rclip 3.3.0 | ours / rclip |"
    )
    print("|---|---:|---:|---:|")
    for name, key in (("wall time, s", "wall_s"), ("CPU time (user + system), s", "cpu_s"),
                      ("peak memory, MiB", "peak_mib")):  # fmt: skip
        print(f"| {name} | {ours[key]:.3f} | {theirs[key]:.3f} | {ours[key] / theirs[key]:.2f} |")
    same = ours["top5"] == theirs["top5"]
    print(f"top 5 the same on both sides: {same}; load average {os.getloadavg()[0]:.1f}")
    SEARCH_RESULTS.parent.mkdir(parents=True, exist_ok=True)
    SEARCH_RESULTS.write_text(json.dumps({
        "photos": n, "searches": searches, "cpus": os.cpu_count(),
        "load_average": os.getloadavg(), "rows": rows, "same_top5": same,
    }, indent=2) + "\n")  # fmt: skip
    print(f"wrote {SEARCH_RESULTS.relative_to(REPO)}")


def report(rows, results, args, work: Path) -> None:
    n = args.photos
    ours, theirs = rows[f"ours {n}"], rows[f"rclip {n}"]
    ours2, theirs2 = rows[f"ours {2 * n}"], rows[f"rclip {2 * n}"]
    mp = f"{args.megapixels:g} MP"
    table = [
        (f"index {n} new {mp} JPEGs (new collection), s", ours["index_s"], theirs["index_s"]),
        (f"index {2 * n} new {mp} JPEGs, s", ours2["index_s"], theirs2["index_s"]),
        (f"peak memory indexing {n}, MiB", ours["index_peak_mib"], theirs["index_peak_mib"]),
        (f"peak memory indexing {2 * n}, MiB", ours2["index_peak_mib"], theirs2["index_peak_mib"]),
        (f"cold search, median of {args.searches}, s", ours["search_s"], theirs["search_s"]),
        ("cold search peak memory, MiB", ours["search_peak_mib"], theirs["search_peak_mib"]),
    ]
    print("| same run | ours | rclip 3.3.0 | ours / rclip |")
    print("|---|---:|---:|---:|")
    for name, a, b in table:
        print(f"| {name} | {a:.2f} | {b:.2f} | {a / b:.2f} |")
    same = results["ours"] == results["rclip"]
    print(f"top 5 the same on both sides: {same} ({results['ours']} vs {results['rclip']})")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "photos": n, "megapixels": args.megapixels, "searches": args.searches,
        "cpus": os.cpu_count(), "rows": rows, "top5": results, "same_top5": same,
        "table": [{"measure": m, "ours": a, "rclip": b, "ratio": a / b} for m, a, b in table],
    }, indent=2) + "\n")  # fmt: skip
    print(f"wrote {RESULTS.relative_to(REPO)}; scratch files in {work}")


if __name__ == "__main__":
    main()
