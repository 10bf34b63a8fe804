"""Recall@k of several models on several captioned datasets, as one markdown table.

    python benchmarks/recall.py --models "ViT-B-32 laion2b_s34b_b79k" \\
        --datasets data/flickr30k/dataset_flickr30k.json data/coco/dataset_coco.json
    python benchmarks/recall.py --models "local-dir:demo/model" --datasets synthetic:500

Each model is "NAME TAG" (an open_clip name and its pretrained tag) or one hf-hub:/local-dir:
identifier. Each dataset is anything `retrieval bench` reads. The table (exact recall, and the
FAISS index's where it differs) is printed and written to --out; benchmarks/README.md lists the
published numbers it should reproduce.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retrieval.encoders.identity import model_identity
from retrieval.eval.bench import RecallReport, run_benchmark
from retrieval.eval.datasets import load_dataset

KS = (1, 5, 10)


def row(report: RecallReport) -> str:
    def cells(recalls: dict[int, float]) -> list[str]:
        return [f"{100 * recalls[k]:.2f}" for k in KS]

    exact = cells(report.text_to_image) + cells(report.image_to_text)
    indexed = cells(report.index_text_to_image) + cells(report.index_image_to_text)
    through_index = "same" if indexed == exact else " / ".join(indexed)
    return " | ".join(
        [str(report.model), report.dataset, *exact, through_index,
         f"{report.images_per_second:.1f}", f"{report.texts_per_second:.1f}"]
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["ViT-B-32 laion2b_s34b_b79k"])
    parser.add_argument("--datasets", nargs="+", default=["synthetic:200"])
    parser.add_argument("--split", default="test")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/recall.md"))
    args = parser.parse_args()

    header = (
        "| model | dataset | T→I R@1 | T→I R@5 | T→I R@10 | I→T R@1 | I→T R@5 | I→T R@10 "
        "| through FAISS | images/s | texts/s |"
    )
    lines = [header, "|" + " --- |" * 11]
    reports = []
    for spec in args.models:
        name, _, tag = spec.partition(" ")
        model = model_identity(name, tag.strip() or None)
        for dataset_spec in args.datasets:
            dataset = load_dataset(dataset_spec, split=args.split)
            report = run_benchmark(
                dataset, model=model, device=args.device, batch_size=args.batch_size, ks=KS
            )
            reports.append(report.to_json())
            lines.append(f"| {row(report)} |")
            print(lines[-1], flush=True)
    table = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table, encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(reports, indent=2) + "\n")
    print(table)
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
