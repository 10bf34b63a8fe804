"""Near-duplicates: how well `retrieval duplicates` groups copies of the same picture, by threshold,
and how long it takes on a large collection.

    python benchmarks/duplicates.py --model demo/model        # after `retrieval demo`
    python benchmarks/duplicates.py --model demo/model --coco ../shared/data/coco-mini/val2017

(a) Quality. Each picture is saved as a PNG original plus four copies: recompressed (JPEG
    quality 40), resized (50%), cropped (4% off every side) and colour-shifted (saturation x1.3,
    brightness x1.1). The pictures: "synthetic", the held-out pictures of the built-in synthetic
    set (the demo model's own domain: one shape on a plain background, where many distinct
    pictures differ from another only in the shape's colour, size or place); "scenes", families
    of two photo-like pictures from one generator, background and palette with different shapes
    in different places (distinct pictures that merely look alike); with --coco, real photos
    (their look-alikes are the other photos). Every
    folder is indexed with the model, then grouped by `duplicate_groups` at each threshold;
    pairwise precision and recall: of the pairs put in one group, how many are copies of one
    picture; of the pairs of copies, how many are in one group. Also: the share of each kind of
    copy grouped with its original.
(b) Speed. find_duplicates over n random unit vectors (float16, with planted near copies),
    exact up to index.neighbours.EXACT_LIMIT, an IVF range search above; and the share of the
    exact pairs that the IVF search finds.
Prints tables and writes benchmarks/results/duplicates.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from index.collection import Collection, NewImage, default_dir
from index.manifest import ModelIdentity
from index.neighbours import close_pairs
from retrieval.duplicates import DEFAULT_THRESHOLD, duplicate_groups
from retrieval.encoders import load_encoder
from retrieval.encoders.identity import model_identity
from retrieval.encoders.protocol import Encoder
from retrieval.eval.datasets import load_dataset
from retrieval.indexer import index_folder

REPO = Path(__file__).resolve().parent.parent
COPIES = ("q40", "half", "crop", "colour")
THRESHOLDS = (0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99)
MIN_RECALL = 0.95
"""The threshold chosen: the highest whose pairwise recall on the synthetic set reaches this, so
that nearly every copy is found, and as few distinct pictures as the model allows are joined."""


def scene(rng: np.random.Generator, style: dict, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A photo-like picture: a noisy two-colour gradient and a handful of blurred shapes in the
    family's palette; the style fixes the look, rng the content."""
    width, height = size
    top, bottom = np.array(style["top"]), np.array(style["bottom"])
    ramp = np.linspace(0, 1, height)[:, None, None]
    pixels = top * (1 - ramp) + bottom * ramp + rng.normal(0, 6, (height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(4, 8))):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(12, 60)
        colour = tuple(int(c) for c in style["palette"][int(rng.integers(len(style["palette"])))])
        kind = int(rng.integers(3))
        box = (x - r, y - r * rng.uniform(0.5, 1.2), x + r, y + r * rng.uniform(0.5, 1.2))
        if kind == 0:
            draw.ellipse(box, fill=colour)
        elif kind == 1:
            draw.rectangle(box, fill=colour)
        else:
            draw.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=colour)
    return image.filter(ImageFilter.GaussianBlur(1.2))


def save_copies(original: Image.Image, folder: Path, name: str) -> None:
    """The original as PNG and its four copies."""
    original = original.convert("RGB")
    original.save(folder / f"{name}.png")
    original.save(folder / f"{name}-q40.jpg", quality=40)
    half = original.resize((original.width // 2, original.height // 2), Image.Resampling.LANCZOS)
    half.save(folder / f"{name}-half.jpg", quality=90)
    dx, dy = round(original.width * 0.04), round(original.height * 0.04)
    crop = original.crop((dx, dy, original.width - dx, original.height - dy))
    crop.save(folder / f"{name}-crop.jpg", quality=90)
    shifted = ImageEnhance.Brightness(ImageEnhance.Color(original).enhance(1.3)).enhance(1.1)
    shifted.save(folder / f"{name}-colour.jpg", quality=90)


def make_scenes(folder: Path, families: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for family in range(families):
        style = {"top": rng.integers(0, 256, 3), "bottom": rng.integers(0, 256, 3),
                 "palette": rng.integers(0, 256, (3, 3))}  # fmt: skip
        for member in range(2):
            save_copies(scene(rng, style), folder, f"f{family:03d}m{member}")


def make_synthetic(folder: Path, pictures: int) -> None:
    dataset = load_dataset("synthetic:500", split="test")
    folder.mkdir(parents=True)
    for name in dataset.images[:pictures]:
        with Image.open(dataset.root / name) as image:
            save_copies(image, folder, Path(name).stem.replace("-", "_"))


def make_real(folder: Path, photos: Path, limit: int) -> None:
    folder.mkdir(parents=True)
    for path in sorted(photos.glob("*.jpg"))[:limit]:
        with Image.open(path) as image:
            save_copies(image, folder, path.stem)


def picture_of(path: str) -> str:
    """The picture a file is a copy of: its name without the copy's suffix."""
    stem = Path(path).stem
    for copy in COPIES:
        stem = stem.removesuffix(f"-{copy}")
    return stem


def quality(collection: Collection, threshold: float) -> dict:
    """Pairwise precision and recall of the grouping at threshold, and per kind of copy the
    share grouped with its original."""
    groups = duplicate_groups(collection, threshold=threshold)
    paths = [i.path for i in collection.catalog.items() if i.status == "ok"]
    sizes = Counter(picture_of(p) for p in paths)
    true_pairs = sum(n * (n - 1) // 2 for n in sizes.values())
    found = correct = 0
    with_original: Counter[str] = Counter()
    for group in groups:
        names = [f.path.name for f in group.files]
        found += len(names) * (len(names) - 1) // 2
        pictures = Counter(picture_of(n) for n in names)
        correct += sum(n * (n - 1) // 2 for n in pictures.values())
        for name in names:
            copy = Path(name).stem.rsplit("-", 1)[-1]
            if copy in COPIES and f"{picture_of(name)}.png" in names:
                with_original[copy] += 1
    originals = len(sizes)
    return {
        "threshold": threshold,
        "groups": len(groups),
        "precision": correct / found if found else 1.0,
        "recall": correct / true_pairs if true_pairs else 1.0,
        **{f"recall_{c}": with_original[c] / originals for c in COPIES},
    }


def measure_quality(name: str, folder: Path, encoder: Encoder, scratch: Path) -> list[dict]:
    collection_dir = scratch / f"{name}.retrieval"
    index_folder(folder, collection_dir=collection_dir, encoder=encoder, model=encoder.identity)
    with Collection.open(collection_dir, readonly=True) as collection:
        rows = [quality(collection, t) for t in THRESHOLDS]
    for row in rows:
        row["set"], row["f1"] = name, _f1(row["precision"], row["recall"])
    return rows


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def measure_speed(n: int, dim: int, scratch: Path, seed: int = 0) -> dict:
    """find_duplicates' time on n stored random vectors with a near copy planted for every
    tenth one, and the pairs' recall of the search actually used against exact search."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    copies = len(vectors[1::10])
    noise = rng.standard_normal((copies, dim)) * (0.3 / np.sqrt(dim))  # cosine about 0.96
    vectors[1::10] = vectors[::10][:copies] + noise
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    root = scratch / f"speed-{n}-{dim}"
    root.mkdir()
    collection = Collection.create(default_dir(root), root=root, model=ModelIdentity("random"),
                                   dim=dim, embedding_dtype="float16")  # fmt: skip
    images = [NewImage(f"{i // 1000}/{i}.jpg", 1, 1, f"h{i}", 1, 1) for i in range(n)]
    with collection.locked():
        collection.append_images(vectors, images)
    started = time.perf_counter()
    groups = duplicate_groups(collection, threshold=DEFAULT_THRESHOLD)
    seconds = time.perf_counter() - started
    collection.close()
    row = {"n": n, "dim": dim, "seconds": seconds, "groups": len(groups)}
    if n <= 50_000:  # the exact search to compare with
        with Collection.open(default_dir(root), readonly=True) as reopened:
            _, stored, _ = reopened.stored()
            exact = close_pairs(stored, DEFAULT_THRESHOLD, exact_limit=n)
            approximate = close_pairs(stored, DEFAULT_THRESHOLD, exact_limit=0)
        both = set(zip(exact.first.tolist(), exact.second.tolist(), strict=True))
        got = set(zip(approximate.first.tolist(), approximate.second.tolist(), strict=True))
        row["ivf_pair_recall"] = len(both & got) / max(1, len(both))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo/model", help="A local-dir model folder.")
    parser.add_argument("--synthetic", type=int, default=300, help="Synthetic pictures.")
    parser.add_argument("--families", type=int, default=50, help="Families of scenes.")
    parser.add_argument("--coco", type=Path, help="A folder of real photos (JPEG) to copy.")
    parser.add_argument("--coco-limit", type=int, default=160)
    parser.add_argument("--speed", default="30000x128,100000x128,100000x512",
                        help="n x dim sizes for the speed measurement.")  # fmt: skip
    args = parser.parse_args()
    encoder = load_encoder(model_identity(f"local-dir:{Path(args.model).resolve()}"),
                           device="cpu", backend="torch")  # fmt: skip
    results: dict = {"model": str(args.model), "default_threshold": DEFAULT_THRESHOLD,
                     "machine": f"{platform.machine()}, {os.cpu_count()} cores"}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="duplicates-") as tmp:
        scratch = Path(tmp)
        make_synthetic(scratch / "synthetic", args.synthetic)
        rows = measure_quality("synthetic", scratch / "synthetic", encoder, scratch)
        make_scenes(scratch / "scenes", args.families)
        rows += measure_quality("scenes", scratch / "scenes", encoder, scratch)
        if args.coco:
            make_real(scratch / "coco", args.coco, args.coco_limit)
            rows += measure_quality("coco", scratch / "coco", encoder, scratch)
        results["quality"] = rows
        print_quality(rows)
        reaching = [r["threshold"] for r in rows if r["set"] == "synthetic"
                    and r["recall"] >= MIN_RECALL]  # fmt: skip
        results["chosen_threshold"] = max(reaching) if reaching else None
        print(f"highest threshold with recall >= {MIN_RECALL} on synthetic: "
              f"{results['chosen_threshold']}")  # fmt: skip
        speeds = []
        for size in args.speed.split(","):
            n, dim = (int(v) for v in size.split("x"))
            speeds.append(measure_speed(n, dim, scratch))
            print(speeds[-1], flush=True)
        results["speed"] = speeds
    print_speed(speeds)
    out = REPO / "benchmarks" / "results" / "duplicates.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(REPO)}")


def print_quality(rows: list[dict]) -> None:
    head = f"{'set':<9} {'T':>5} {'groups':>6} {'prec':>6} {'recall':>6} {'F1':>6}"
    print(head + "".join(f" {c:>6}" for c in COPIES))
    for r in rows:
        mark = " <- default" if abs(r["threshold"] - DEFAULT_THRESHOLD) < 1e-9 else ""
        print(f"{r['set']:<9} {r['threshold']:>5.2f} {r['groups']:>6} {r['precision']:>6.3f} "
              f"{r['recall']:>6.3f} {r['f1']:>6.3f}"
              + "".join(f" {r[f'recall_{c}']:>6.2f}" for c in COPIES) + mark)  # fmt: skip


def print_speed(rows: list[dict]) -> None:
    print(f"\n{'n':>8} {'dim':>4} {'seconds':>8} {'groups':>7} {'IVF pair recall':>16}")
    for r in rows:
        recall = f"{r['ivf_pair_recall']:.4f}" if "ivf_pair_recall" in r else "-"
        print(f"{r['n']:>8} {r['dim']:>4} {r['seconds']:>8.2f} {r['groups']:>7} {recall:>16}")


if __name__ == "__main__":
    main()
