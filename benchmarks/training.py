"""Training speed and what the demo's model learns against wall time.

    python benchmarks/training.py [--vit-steps 4] [--demo-epochs 10]

1. Training images per second of ViT-B-32 (random weights) at batch 64, both towers trained, on
   this machine's device; the first step (decoding, allocation) is left out.
2. The demo's small model trained from scratch on synthetic:2000: validation recall after each
   epoch against wall time, then recall@k on the 500 held-out test pictures.
Prints tables and writes benchmarks/results/training.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from index.manifest import ModelIdentity
from retrieval.demo import TEST_SPEC, TRAIN_SPEC
from retrieval.encoders import load_encoder
from retrieval.encoders.identity import model_identity
from retrieval.encoders.torch_encoder import architecture
from retrieval.eval.bench import run_benchmark
from retrieval.eval.datasets import load_dataset
from retrieval.training import TrainConfig, TrainProgress, train


def vit_throughput(steps: int, batch_size: int, device: str) -> dict:
    dataset = load_dataset("synthetic:500", split="train")
    rates: list[float] = []
    step_times: list[float] = []
    clock = [time.perf_counter()]

    def record(event: TrainProgress) -> None:
        if event.phase == "step":
            now = time.perf_counter()
            step_times.append(now - clock[0])
            clock[0] = now
            rates.append(batch_size / step_times[-1])

    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(out=Path(out), model=ModelIdentity("ViT-B-32", None),
                             steps=steps, batch_size=batch_size, val_split=0.0, warmup=1,
                             device=device)  # fmt: skip
        train(dataset, config, record)
    steady = rates[1:] or rates
    return {
        "model": "ViT-B-32 (random weights)",
        "batch_size": batch_size,
        "steps_measured": len(steady),
        "images_per_second": sum(steady) / len(steady),
        "seconds_per_step": [round(t, 2) for t in step_times],
    }


def demo_curve(epochs: int) -> dict:
    train_set = load_dataset(TRAIN_SPEC, split="train")
    test_set = load_dataset(TEST_SPEC, split="test")
    points = []
    started = time.perf_counter()

    def record(event: TrainProgress) -> None:
        if event.phase == "eval" and event.recall:
            points.append(
                {
                    "epoch": event.epoch,
                    "seconds": round(time.perf_counter() - started, 1),
                    "val_text_to_image": event.recall["text_to_image"],
                    "val_image_to_text": event.recall["image_to_text"],
                }
            )

    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(out=Path(out), model_cfg=architecture("demo"), epochs=epochs,
                             batch_size=64, lr=1e-3, warmup=50, val_split=0.05)  # fmt: skip
        report = train(train_set, config, record)
        encoder = load_encoder(model_identity(f"local-dir:{out}"), device="cpu")
        test = run_benchmark(test_set, encoder=encoder)
    return {
        "train": f"{TRAIN_SPEC}/train ({len(train_set)} pictures, 5% held out)",
        "training_seconds": round(report.seconds, 1),
        "curve": points,
        "test": {
            "dataset": test.dataset,
            "text_to_image": test.text_to_image,
            "image_to_text": test.image_to_text,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vit-steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--demo-epochs", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/training.json"))
    args = parser.parse_args()

    vit = vit_throughput(args.vit_steps, args.batch_size, args.device)
    print(f"ViT-B-32 training, batch {vit['batch_size']}: {vit['images_per_second']:.2f} images/s")
    demo = demo_curve(args.demo_epochs)
    print(f"\ndemo model on {demo['train']}")
    print(f"{'epoch':>5} {'seconds':>8} {'val T->I R@1/5/10':>20} {'val I->T R@1/5/10':>20}")
    for p in demo["curve"]:
        t2i = "/".join(f"{100 * v:.1f}" for v in p["val_text_to_image"].values())
        i2t = "/".join(f"{100 * v:.1f}" for v in p["val_image_to_text"].values())
        print(f"{p['epoch']:>5} {p['seconds']:>8} {t2i:>20} {i2t:>20}")
    test = demo["test"]
    print(
        f"held-out {test['dataset']}: text->image R@1/5/10 "
        + "/".join(f"{100 * v:.1f}" for v in test["text_to_image"].values())
        + ", image->text "
        + "/".join(f"{100 * v:.1f}" for v in test["image_to_text"].values())
    )
    result = {"cores": os.cpu_count(), "vit_b_32": vit, "demo": demo}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
