"""The training loop: steps, validation recall at each epoch's end, the best model saved in
open_clip's local-dir format, and a resumable state."""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from index.atomic import atomic_path
from index.manifest import ModelIdentity

from ..encoders.torch_encoder import (
    TorchEncoder,
    create_model,
    create_untrained,
    import_torch,
    model_config,
    resolve_device,
    save_local_dir,
    wrap_model,
)
from ..eval.datasets import CaptionedDataset
from ..eval.recall import recall_at_k
from .config import TrainConfig, TrainProgress, TrainReport, check_config
from .data import TrainingData
from .errors import TrainingError
from .optim import adamw, contrastive_loss, learning_rate

STATE_DIR = "train_state"
CHECKPOINT = "checkpoint.pt"
RECALL_KS = (1, 5, 10)


def train(
    dataset: CaptionedDataset,
    config: TrainConfig,
    progress: Callable[[TrainProgress], None] | None = None,
) -> TrainReport:
    """Train on `dataset` and save the best model (by validation recall) in config.out, in
    open_clip's local-dir format, loadable as `local-dir:OUT`."""
    return _Trainer(dataset, config, progress or (lambda _event: None)).run()


class _Trainer:
    def __init__(
        self,
        dataset: CaptionedDataset,
        config: TrainConfig,
        progress: Callable[[TrainProgress], None],
    ) -> None:
        check_config(config, dataset)
        self.torch = import_torch()
        self.dataset = dataset
        self.config = config
        self.progress = progress
        self.out = Path(config.out).expanduser().resolve()
        self.device = resolve_device(config.device)
        self.precision = config.precision
        if self.precision == "auto":
            self.precision = "bf16" if self.device.startswith("cuda") else "fp32"
        self.encoder, self.model_cfg = self._build_model()
        self.model = self.encoder.model
        self.data = TrainingData(dataset, self.encoder, config)
        self.steps_per_epoch = self.data.steps_per_epoch
        self.total_steps = config.steps or config.epochs * self.steps_per_epoch  # type: ignore[operator]
        self.optimizer = adamw(self.torch, self.model, config)
        self.loss_fn = contrastive_loss(config.loss)
        self.step = 0
        self.best_score = -1.0
        self.history: list[dict[str, Any]] = []
        self.initial_recall: dict[str, dict[int, float]] = {}
        self.best: dict[str, Any] = {"epoch": 0, "recall": {}}

    # -- set-up -------------------------------------------------------------------------------

    def _build_model(self) -> tuple[TorchEncoder, dict[str, Any]]:
        torch = self.torch
        torch.manual_seed(self.config.seed)
        if self.config.model_cfg is not None:
            # Built through a local-dir: folder, so that it loads exactly as the saved result will.
            with tempfile.TemporaryDirectory(prefix="retrieval-init-") as scratch:
                initial = create_untrained(
                    self.config.model_cfg, Path(scratch), seed=self.config.seed
                )
                encoder = self._wrap(initial)
            encoder.identity = ModelIdentity("local-dir:" + str(self.out))
            model_cfg = dict(self.config.model_cfg)
        else:
            assert self.config.model is not None
            encoder = self._wrap(self.config.model)
            model_cfg = model_config(self.config.model)
        if self.config.loss == "siglip" and getattr(encoder.model, "logit_bias", None) is None:
            encoder.model.logit_bias = torch.nn.Parameter(torch.full((), -10.0, device=self.device))
            encoder.model.logit_scale.data.fill_(math.log(10.0))
        if self.config.lock_image:
            encoder.model.lock_image_tower()
        if self.config.lock_text:
            encoder.model.lock_text_tower()
        return encoder, model_cfg

    def _wrap(self, identity: ModelIdentity) -> TorchEncoder:
        model, preprocess = create_model(identity)
        return wrap_model(identity, model, preprocess, device=self.device, precision=self.precision)

    # -- the run ------------------------------------------------------------------------------

    def run(self) -> TrainReport:
        started = time.perf_counter()
        if self.config.resume:
            self._load_state()
        else:
            self.initial_recall = self._evaluate(epoch=0)
        epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        loss = math.nan
        while self.step < self.total_steps:
            epoch = self.step // self.steps_per_epoch
            loss = self._train_epoch(epoch)
            if self.step % self.steps_per_epoch == 0 or self.step >= self.total_steps:
                self._end_of_epoch(epoch + 1, loss)
        return TrainReport(
            out=self.out,
            steps=self.step,
            epochs=epochs,
            initial_recall=self.initial_recall,
            best_recall=self.best["recall"],
            best_epoch=self.best["epoch"],
            final_loss=loss,
            seconds=time.perf_counter() - started,
            history=self.history,
        )

    def _train_epoch(self, epoch: int) -> float:
        torch = self.torch
        self.model.train()
        first = self.step - epoch * self.steps_per_epoch  # > 0 when resuming mid-epoch
        last = min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch)
        loss_value = math.nan
        clock, seen = time.perf_counter(), 0
        for pixels, captions in self.data.batches(epoch, first, last):
            self._set_lr()
            images = self._normalise(pixels)
            tokens = self.encoder.tokenizer(captions).to(self.device)
            with self._autocast():
                features = self.model(images, tokens)
                loss = self.loss_fn(*features)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
            self.optimizer.step()
            with torch.no_grad():  # as CLIP: the temperature never goes below 1/100
                self.model.logit_scale.clamp_(0, math.log(100))
            self.step += 1
            seen += len(captions)
            loss_value = float(loss.detach())
            self.progress(
                TrainProgress(
                    "step", epoch + 1, self.step, self.total_steps, loss=loss_value,
                    temperature=float(1 / self.model.logit_scale.exp().detach()),
                    images_per_second=seen / (time.perf_counter() - clock),
                )
            )  # fmt: skip
            every = self.config.checkpoint_every
            if every and self.step % every == 0 and self.step % self.steps_per_epoch:
                self._save_state()
        return loss_value

    def _normalise(self, pixels: np.ndarray) -> Any:
        torch = self.torch
        batch = torch.from_numpy(pixels).to(self.device).permute(0, 3, 1, 2).float().div_(255)
        mean = torch.tensor(self.encoder.mean, device=self.device).view(1, -1, 1, 1)
        std = torch.tensor(self.encoder.std, device=self.device).view(1, -1, 1, 1)
        return (batch - mean) / std

    def _autocast(self) -> Any:
        return self.encoder._autocast()

    def _set_lr(self) -> None:
        lr = learning_rate(self.step, self.config.lr, self.config.warmup, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    # -- validation and checkpoints -------------------------------------------------------------

    def _evaluate(self, epoch: int) -> dict[str, dict[int, float]]:
        """Recall@k on the held-out images ({} without any), as `retrieval bench` measures it."""
        if len(self.data.val_rows) == 0:
            return {}
        pixels, texts, owner = self.data.validation()
        images = np.concatenate(
            [self.encoder.encode_images(pixels[i : i + 256]) for i in range(0, len(pixels), 256)]
        )
        text_vectors = np.concatenate(
            [self.encoder.encode_texts(texts[i : i + 256]) for i in range(0, len(texts), 256)]
        )
        text_to_image, image_to_text = recall_at_k(images, text_vectors, owner, RECALL_KS)
        recall = {"text_to_image": text_to_image, "image_to_text": image_to_text}
        self.progress(TrainProgress("eval", epoch, self.step, self.total_steps, recall=recall))
        return recall

    def _end_of_epoch(self, epoch: int, loss: float) -> None:
        recall = self._evaluate(epoch)
        score = _score(recall) if recall else float(epoch)  # no validation: keep the latest
        self.history.append({"epoch": epoch, "step": self.step, "loss": loss, "recall": recall})
        if score > self.best_score:
            self.best_score = score
            self.best = {"epoch": epoch, "recall": recall}
            save_local_dir(self.model, self.model_cfg, self.out, self.encoder.preprocess_cfg)
            self.progress(TrainProgress("best", epoch, self.step, self.total_steps, recall=recall))
        self._save_state()

    def _save_state(self) -> None:
        torch = self.torch
        folder = self.out / STATE_DIR
        folder.mkdir(parents=True, exist_ok=True)
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "best_score": self.best_score,
            "best": self.best,
            "history": self.history,
            "initial_recall": self.initial_recall,
            "config": {k: v for k, v in asdict(self.config).items() if k not in ("out", "resume")}
            | {"model": str(self.config.model) if self.config.model else None},
        }
        with atomic_path(folder / CHECKPOINT) as tmp:
            torch.save(state, tmp)

    def _load_state(self) -> None:
        path = self.out / STATE_DIR / CHECKPOINT
        if not path.is_file():
            raise TrainingError(f"nothing to resume: no {path}; start without --resume")
        state = self.torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.best_score = float(state["best_score"])
        self.best = state["best"]
        self.history = list(state["history"])
        self.initial_recall = state["initial_recall"]


def _score(recall: dict[str, dict[int, float]]) -> float:
    """One number to pick the best checkpoint: mean recall over both directions and all k."""
    values = [v for direction in recall.values() for v in direction.values()]
    return float(np.mean(values)) if values else 0.0
