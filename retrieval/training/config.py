"""What a training run is asked to do, what it reports as it goes, and what it returns."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from index.manifest import ModelIdentity

from ..eval.datasets import CaptionedDataset
from .errors import TrainingError


@dataclass
class TrainConfig:
    """What to train and how. Exactly one of `model` (open_clip weights to fine-tune, or an
    architecture with random weights) and `model_cfg` (an architecture to build from scratch)."""

    out: Path
    model: ModelIdentity | None = None
    model_cfg: dict[str, Any] | None = None
    epochs: int | None = None
    steps: int | None = None
    batch_size: int = 64
    lr: float = 5e-4
    warmup: int = 100
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    lock_image: bool = False
    lock_text: bool = False
    precision: str = "auto"
    loss: str = "clip"
    val_split: float = 0.1
    seed: int = 0
    device: str = "auto"
    workers: int | None = None
    checkpoint_every: int = 0
    """Also save the resumable state every this many steps (0: at each epoch's end only)."""
    resume: bool = False


@dataclass(frozen=True)
class TrainProgress:
    """phase 'step': after a step (loss, temperature, images/s); 'eval': validation recall
    (epoch 0 is before training); 'best': a better model was saved."""

    phase: str
    epoch: int
    step: int
    total_steps: int
    loss: float = math.nan
    temperature: float = math.nan
    images_per_second: float = math.nan
    recall: dict[str, dict[int, float]] | None = None


@dataclass
class TrainReport:
    out: Path
    steps: int
    epochs: int
    initial_recall: dict[str, dict[int, float]]
    best_recall: dict[str, dict[int, float]]
    best_epoch: int
    final_loss: float
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)


def check_config(config: TrainConfig, dataset: CaptionedDataset) -> None:
    """Raise TrainingError for a configuration no run could carry out on `dataset`."""
    if (config.model is None) == (config.model_cfg is None):
        raise TrainingError("give a model to fine-tune or an architecture to train from scratch")
    if (config.epochs is None) == (config.steps is None):
        raise TrainingError("give either --epochs or --steps")
    if (config.epochs or config.steps or 0) < 1:
        raise TrainingError("--epochs and --steps must be at least 1")
    if config.batch_size < 2:
        raise TrainingError("--batch-size must be at least 2: contrastive loss needs negatives")
    if not 0 <= config.val_split < 1:
        raise TrainingError(f"--val-split must be in [0, 1), not {config.val_split}")
    if config.loss not in ("clip", "siglip"):
        raise TrainingError(f"unknown loss {config.loss!r}; use clip or siglip")
    if config.lock_image and config.lock_text:
        raise TrainingError("--lock-image and --lock-text together leave nothing to train")
    if len(dataset) * (1 - config.val_split) < 2:
        raise TrainingError(f"{dataset.name}: too few images to train on")
