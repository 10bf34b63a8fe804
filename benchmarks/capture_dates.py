"""What reading capture dates costs while indexing, and when a collection is dated afterwards.

    python benchmarks/capture_dates.py                  # ../shared/data photos, if there
    python benchmarks/capture_dates.py --photos DIR     # any folder of JPEGs

For each photo, from its bytes in memory (no disk in the figures), measures
  (a) decoding as the indexer does (draft-mode JPEG at the model's 224 px, upright, RGB),
  (b) the same decode reading the capture time from the header it opened (`on_open`),
  (c) reading the capture time alone from the bytes (Pillow open + getexif, no decode): what a
      collection made before capture dates pays per photo on its next index run.
Each figure is the median over photos of the best of --repeat runs, the steps taking turns.
Without real photos, or with --synthetic, it writes 1600x1200 JPEGs with an EXIF date, offset and
camera (COCO's photos carry little EXIF). Prints a table and writes
benchmarks/results/capture_dates.json.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retrieval.capture import capture_from_bytes, capture_from_image
from retrieval.images import decode_image

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def photos(folder: Path | None, limit: int, synthetic: bool) -> tuple[str, list[bytes]]:
    if folder is None and SHARED.is_dir() and not synthetic:
        folder = SHARED
    if folder is not None:
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
        return str(folder), [p.read_bytes() for p in files[:limit]]
    rng = np.random.default_rng(0)
    made = []
    for _ in range(min(limit, 40)):
        pixels = rng.integers(0, 256, (1200, 1600, 3), dtype=np.uint8)
        exif = Image.Exif()
        exif[0x010F], exif[0x0110] = "FUJIFILM", "X-T4"
        exif.get_ifd(0x8769)[0x9003] = "2023:07:14 18:30:00"
        exif.get_ifd(0x8769)[0x9011] = "+02:00"
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, "JPEG", quality=90, exif=exif)
        made.append(out.getvalue())
    return "synthetic 1600x1200 JPEGs with EXIF dates", made


def best_ms(work: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append((time.perf_counter() - start) * 1000)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=None)
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--synthetic", action="store_true")
    args = parser.parse_args()
    source, datas = photos(args.photos, args.limit, args.synthetic)

    def plain(data: bytes) -> object:
        return decode_image(data, min_size=224)

    def dated(data: bytes) -> object:
        return decode_image(data, min_size=224, on_open=lambda img: capture_from_image(img, 0))

    rows = {"decode": plain, "decode + capture date": dated,
            "capture date alone (header)": lambda data: capture_from_bytes(data, 0)}  # fmt: skip
    per_photo: dict[str, list[float]] = {name: [] for name in rows}
    for data in datas:  # the steps take turns on each photo, so drift in the machine's load
        for name, work in rows.items():  # falls on all of them alike
            per_photo[name].append(best_ms(lambda w=work: w(data), args.repeat))  # noqa: B023
    results = {name: statistics.median(times) for name, times in per_photo.items()}
    extra = results["decode + capture date"] - results["decode"]
    print(f"{len(datas)} photos from {source}; median of the best of {args.repeat} runs")
    print(f"{'step':<30} {'ms per photo':>12}")
    for name, ms in results.items():
        print(f"{name:<30} {ms:>12.3f}")
    print(f"{'added by the capture date':<30} {extra:>12.3f}  ({extra / results['decode']:+.1%})")
    suffix = "_synthetic" if source.startswith("synthetic") else ""
    out = Path(__file__).resolve().parent / "results" / f"capture_dates{suffix}.json"
    out.parent.mkdir(exist_ok=True)
    report = {"photos": len(datas), "source": source, "repeat": args.repeat,
              "ms_per_photo": results, "added_ms": extra, "machine": platform.platform(),
              "python": platform.python_version()}  # fmt: skip
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
