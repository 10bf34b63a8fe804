"""Which open_clip architectures the ONNX export serves, and what cutting text queries saves.

    python benchmarks/onnx_architectures.py [--models RN50 ViT-B-32 ...] [--repeats 20]

For each architecture (random weights, seed 0; agreement does not depend on them) it exports
both towers at fp32 into a scratch cache, as the first use of a model does, and reports:
  - the export's time and whether its text graph takes token ids cut after the end token
    (`text_cut_after_end`: a causal tower pooled at the end token) or the whole context,
  - the smallest cosine between ONNX Runtime's and open_clip's embeddings over varied texts
    (short, long, empty, over-long, non-ASCII), encoded together and one by one, and over
    photo-like pictures,
  - for a cut graph, one short query's warm `encode_texts` latency on the same graph fed the
    whole context and fed the cut ids (median of --repeats): what the cut saves.
Prints a table and writes benchmarks/results/onnx_architectures.json. Not part of the tests:
each export takes tens of seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_MODELS = ("RN50", "ViT-B-32", "ViT-B-16", "EVA02-B-16", "PE-Core-T-16-384", "MobileCLIP-S1")
TEXTS = (
    "a dog",
    "a red car parked by the sea at night with its lights on",
    "",
    "word " * 100,
    "🌅 sunset &amp; sea, ünïcödé",
)
QUERY = "a dog on a beach"


def median_ms(call, repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def check(name: str, folder: Path, repeats: int) -> dict[str, object]:
    import open_clip

    from retrieval.encoders import load_encoder
    from retrieval.encoders.tokenizer import load_tokenizer, up_to_last_end
    from retrieval.encoders.torch_encoder import create_untrained

    identity = create_untrained(open_clip.get_model_config(name), folder / name)
    started = time.perf_counter()
    onnx = load_encoder(identity, device="cpu", backend="onnx", precision="fp32")
    export_s = time.perf_counter() - started
    reference = load_encoder(identity, device="cpu", backend="torch", precision="fp32")

    texts = list(TEXTS)
    expected = reference.encode_texts(texts)
    together = float((onnx.encode_texts(texts) * expected).sum(1).min())
    alone = min(float(onnx.encode_texts([t])[0] @ expected[i]) for i, t in enumerate(texts))
    height, width = onnx.image_size
    pixels = np.random.default_rng(0).integers(0, 256, (4, height, width, 3), np.uint8)
    image = float((onnx.encode_images(pixels) * reference.encode_images(pixels)).sum(1).min())

    row: dict[str, object] = {
        "model": name,
        "export_s": round(export_s, 1),
        "text_cut_after_end": onnx.cut_texts,
        "min_cosine_texts_together": round(together, 6),
        "min_cosine_texts_one_by_one": round(alone, 6),
        "min_cosine_images": round(image, 6),
    }
    if onnx.cut_texts:
        onnx.settle("text")  # the session a serving process ends up on
        tokens = load_tokenizer(onnx.context_length)([QUERY])
        row["query_tokens"] = int(up_to_last_end(tokens).shape[1])
        row["context_length"] = int(tokens.shape[1])
        onnx.cut_texts = False  # the same graph, fed the whole context
        row["query_ms_whole"] = round(median_ms(lambda: onnx.encode_texts([QUERY]), repeats), 2)
        onnx.cut_texts = True
        row["query_ms_cut"] = round(median_ms(lambda: onnx.encode_texts([QUERY]), repeats), 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/onnx_architectures.json")
    )
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["RETRIEVAL_CACHE"] = str(Path(tmp) / "cache")  # exports of random weights
        for name in args.models:
            rows.append(check(name, Path(tmp), args.repeats))
            print(f"{name}: done", file=sys.stderr)

    print(
        f"{'model':<18} {'export s':>8} {'text graph':>11} {'cos texts':>10} {'one by one':>10} "
        f"{'images':>9} {'query ms whole':>15} {'cut':>6} {'tokens':>7}"
    )
    for r in rows:
        graph = "cut" if r["text_cut_after_end"] else "whole"
        speed = (
            f"{r['query_ms_whole']:>15.2f} {r['query_ms_cut']:>6.2f} "
            f"{r['query_tokens']:>3}/{r['context_length']:<3}"
            if r["text_cut_after_end"]
            else f"{'-':>15} {'-':>6} {'-':>7}"
        )
        print(
            f"{r['model']:<18} {r['export_s']:>8.1f} {graph:>11} "
            f"{r['min_cosine_texts_together']:>10.6f} {r['min_cosine_texts_one_by_one']:>10.6f} "
            f"{r['min_cosine_images']:>9.6f} {speed}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cores": os.cpu_count(), "models": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
