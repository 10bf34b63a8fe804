"""Contrastive training of the image and text towers, from scratch or from any open_clip weights.

CLIP's symmetric InfoNCE loss with a learnable temperature (open_clip's ClipLoss; its sigmoid
loss on request), AdamW with open_clip's weight-decay groups, a cosine schedule with warm-up,
gradient clipping, optional locked towers (LiT). Images come through the indexer's decoding path.
The data order is a pure function of (seed, epoch), so a run resumed from its last checkpoint
ends exactly where an uninterrupted run would.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from index.atomic import atomic_path
from index.manifest import ModelIdentity

from .datasets import CaptionedDataset, DatasetError
from .encoders.torch_encoder import (
    Encoder,
    create_model,
    create_untrained,
    import_torch,
    model_config,
    resolve_device,
    save_local_dir,
    wrap_model,
)
from .errors import RetrievalError
from .pipeline import decode_files
from .recall import image_to_text_ranks, recall_from_ranks, text_to_image_ranks
from .scan import FileInfo

STATE_DIR = "train_state"
CHECKPOINT = "checkpoint.pt"
RECALL_KS = (1, 5, 10)
PIXEL_CACHE_BYTES = 1 << 30
"""Datasets whose prepared pixels fit in this are decoded once, not once per epoch."""


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
        _check(config, dataset)
        self.torch = import_torch()
        self.dataset = dataset
        self.config = config
        self.progress = progress
        self.out = Path(config.out).expanduser().resolve()
        self.device = resolve_device(config.device)
        self.precision = config.precision
        if self.precision == "auto":
            self.precision = "bf16" if self.device.startswith("cuda") else "fp32"
        self.train_rows, self.val_rows = _split(len(dataset), config.val_split, config.seed)
        self.steps_per_epoch = max(1, len(self.train_rows) // config.batch_size)
        self.total_steps = config.steps or config.epochs * self.steps_per_epoch  # type: ignore[operator]
        self.encoder, self.model_cfg = self._build_model()
        self.model = self.encoder.model
        self.optimizer = self._optimizer()
        self.loss_fn = self._loss()
        self.step = 0
        self.best_score = -1.0
        self.history: list[dict[str, Any]] = []
        self.initial_recall: dict[str, dict[int, float]] = {}
        self.best: dict[str, Any] = {"epoch": 0, "recall": {}}
        self._val_pixels: np.ndarray | None = None
        height, width = self.encoder.image_size
        fits = len(dataset) * height * width * 3 <= PIXEL_CACHE_BYTES
        self._pixel_cache: dict[int, np.ndarray] | None = {} if fits else None

    # -- set-up -------------------------------------------------------------------------------

    def _build_model(self) -> tuple[Encoder, dict[str, Any]]:
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

    def _wrap(self, identity: ModelIdentity) -> Encoder:
        model, preprocess = create_model(identity)
        return wrap_model(identity, model, preprocess, device=self.device, precision=self.precision)

    def _optimizer(self) -> Any:
        # open_clip's groups: no weight decay on gains, biases, norms, embeddings and temperature.
        def exempt(name: str, parameter: Any) -> bool:
            return parameter.ndim < 2 or any(
                key in name for key in ("bn", "ln", "bias", "logit_scale", "embedding", "token")
            )

        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        decay = self.config.weight_decay
        groups = [
            {"params": [p for n, p in named if exempt(n, p)], "weight_decay": 0.0},
            {"params": [p for n, p in named if not exempt(n, p)], "weight_decay": decay},
        ]
        return self.torch.optim.AdamW(
            groups, lr=self.config.lr, betas=(0.9, 0.98), eps=1e-6, foreach=False
        )

    def _loss(self) -> Any:
        from open_clip.loss import ClipLoss, SigLipLoss

        return SigLipLoss() if self.config.loss == "siglip" else ClipLoss()

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
        for pixels, captions in self._batches(epoch, first, last):
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

    def _batches(self, epoch: int, first: int, last: int) -> Iterator[tuple[np.ndarray, list[str]]]:
        """Batches first..last-1 of this epoch: uint8 (b, H, W, 3) pixels and one caption each.

        The order and the caption drawn for each image depend only on (seed, epoch).
        """
        rng = np.random.default_rng([self.config.seed, epoch])
        order = self.train_rows[rng.permutation(len(self.train_rows))]
        choice = rng.random(len(order))
        size = self.config.batch_size
        rows = order[first * size : last * size] if len(order) >= size else order
        picks = choice[first * size : last * size] if len(order) >= size else choice
        captions = [
            self.dataset.captions[r][int(p * len(self.dataset.captions[r]))]
            for r, p in zip(rows.tolist(), picks.tolist(), strict=True)
        ]
        pixels: list[np.ndarray] = []
        for offset, decoded in enumerate(self._decode(rows)):
            pixels.append(decoded)
            if len(pixels) == min(size, len(rows)):
                start = offset + 1 - len(pixels)
                yield np.stack(pixels), captions[start : offset + 1]
                pixels = []

    def _decode(self, rows: np.ndarray) -> Iterator[np.ndarray]:
        """Prepared pixels of these rows, in order; kept in memory when the dataset fits."""
        cached = self._pixel_cache
        if cached is not None and all(r in cached for r in rows.tolist()):
            yield from (cached[r] for r in rows.tolist())
            return
        files = [FileInfo(self.dataset.images[r], 0, 0) for r in rows.tolist()]
        for row, result in zip(
            rows.tolist(),
            decode_files(
                self.dataset.root,
                files,
                prepare=self.encoder.prepare,
                min_side=self.encoder.min_side,
                workers=self.config.workers,
            ),
            strict=True,
        ):
            if result.pixels is None:
                raise DatasetError(
                    f"{self.dataset.origins[row]}: image {self.dataset.images[row]} cannot be "
                    f"used ({result.error})"
                )
            if cached is not None:
                cached[row] = result.pixels
            yield result.pixels

    def _normalise(self, pixels: np.ndarray) -> Any:
        torch = self.torch
        batch = torch.from_numpy(pixels).to(self.device).permute(0, 3, 1, 2).float().div_(255)
        mean = torch.tensor(self.encoder.mean, device=self.device).view(1, -1, 1, 1)
        std = torch.tensor(self.encoder.std, device=self.device).view(1, -1, 1, 1)
        return (batch - mean) / std

    def _autocast(self) -> Any:
        return self.encoder._autocast()

    def _set_lr(self) -> None:
        """Linear warm-up, then cosine decay to zero at the last step (open_clip's cosine_lr)."""
        base, warmup, total = self.config.lr, self.config.warmup, self.total_steps
        if self.step < warmup:
            lr = base * (self.step + 1) / warmup
        else:
            progress = (self.step - warmup) / max(1, total - warmup)
            lr = 0.5 * (1 + math.cos(math.pi * progress)) * base
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    # -- validation and checkpoints -------------------------------------------------------------

    def _evaluate(self, epoch: int) -> dict[str, dict[int, float]]:
        if len(self.val_rows) == 0:
            return {}
        if self._val_pixels is None:
            self._val_pixels = np.stack(list(self._decode(self.val_rows)))
        captions = [self.dataset.captions[r] for r in self.val_rows.tolist()]
        texts = [t for group in captions for t in group]
        owner = np.repeat(np.arange(len(captions)), [len(g) for g in captions])
        images = np.concatenate(
            [
                self.encoder.encode_images(self._val_pixels[i : i + 256])
                for i in range(0, len(self._val_pixels), 256)
            ]
        )
        text_vectors = np.concatenate(
            [self.encoder.encode_texts(texts[i : i + 256]) for i in range(0, len(texts), 256)]
        )
        recall = {
            "text_to_image": recall_from_ranks(
                text_to_image_ranks(images, text_vectors, owner), RECALL_KS
            ),
            "image_to_text": recall_from_ranks(
                image_to_text_ranks(images, text_vectors, owner), RECALL_KS
            ),
        }
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
            raise RetrievalError(f"nothing to resume: no {path}; start without --resume")
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


def _split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows): a seeded fraction of the images held out."""
    order = np.random.default_rng([seed, 2**31 - 1]).permutation(n)
    held = round(n * fraction)
    if fraction > 0:
        held = max(1, held)
    return np.sort(order[held:]), np.sort(order[:held])


def _check(config: TrainConfig, dataset: CaptionedDataset) -> None:
    if (config.model is None) == (config.model_cfg is None):
        raise RetrievalError("give a model to fine-tune or an architecture to train from scratch")
    if (config.epochs is None) == (config.steps is None):
        raise RetrievalError("give either --epochs or --steps")
    if (config.epochs or config.steps or 0) < 1:
        raise RetrievalError("--epochs and --steps must be at least 1")
    if config.batch_size < 2:
        raise RetrievalError("--batch-size must be at least 2: contrastive loss needs negatives")
    if not 0 <= config.val_split < 1:
        raise RetrievalError(f"--val-split must be in [0, 1), not {config.val_split}")
    if config.loss not in ("clip", "siglip"):
        raise RetrievalError(f"unknown loss {config.loss!r}; use clip or siglip")
    if config.lock_image and config.lock_text:
        raise RetrievalError("--lock-image and --lock-text together leave nothing to train")
    if len(dataset) * (1 - config.val_split) < 2:
        raise RetrievalError(f"{dataset.name}: too few images to train on")
