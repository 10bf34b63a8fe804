"""The training data: which images train and which validate, and batches of prepared pixels in
an order that is a pure function of (seed, epoch), so a resumed run sees what an uninterrupted
one would."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..encoders.protocol import Encoder
from ..eval.datasets import CaptionedDataset
from ..eval.errors import DatasetError
from ..pipeline import decode_files
from ..scan import FileInfo
from .config import TrainConfig

PIXEL_CACHE_BYTES = 1 << 30
"""Datasets whose prepared pixels fit in this are decoded once, not once per epoch."""


def split_rows(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows), int64 each: a seeded fraction of the images held out."""
    order = np.random.default_rng([seed, 2**31 - 1]).permutation(n)
    held = round(n * fraction)
    if fraction > 0:
        held = max(1, held)
    return np.sort(order[held:]), np.sort(order[:held])


class TrainingData:
    """A dataset split into training and validation images, decoded through the indexer's path
    with the encoder's preparation (kept in memory when the whole dataset fits)."""

    def __init__(self, dataset: CaptionedDataset, encoder: Encoder, config: TrainConfig) -> None:
        self.dataset = dataset
        self.encoder = encoder
        self.batch_size = config.batch_size
        self.seed = config.seed
        self.workers = config.workers
        self.train_rows, self.val_rows = split_rows(len(dataset), config.val_split, config.seed)
        height, width = encoder.image_size
        fits = len(dataset) * height * width * 3 <= PIXEL_CACHE_BYTES
        self._pixel_cache: dict[int, np.ndarray] | None = {} if fits else None
        self._val_pixels: np.ndarray | None = None

    @property
    def steps_per_epoch(self) -> int:
        return max(1, len(self.train_rows) // self.batch_size)

    def batches(self, epoch: int, first: int, last: int) -> Iterator[tuple[np.ndarray, list[str]]]:
        """Batches first..last-1 of this epoch: uint8 (b, H, W, 3) pixels and one caption each.

        The order and the caption drawn for each image depend only on (seed, epoch).
        """
        rng = np.random.default_rng([self.seed, epoch])
        order = self.train_rows[rng.permutation(len(self.train_rows))]
        choice = rng.random(len(order))
        size = self.batch_size
        rows = order[first * size : last * size] if len(order) >= size else order
        picks = choice[first * size : last * size] if len(order) >= size else choice
        captions = [
            self.dataset.captions[r][int(p * len(self.dataset.captions[r]))]
            for r, p in zip(rows.tolist(), picks.tolist(), strict=True)
        ]
        pixels: list[np.ndarray] = []
        for offset, decoded in enumerate(self.decode(rows)):
            pixels.append(decoded)
            if len(pixels) == min(size, len(rows)):
                start = offset + 1 - len(pixels)
                yield np.stack(pixels), captions[start : offset + 1]
                pixels = []

    def validation(self) -> tuple[np.ndarray, list[str], np.ndarray]:
        """The held-out images: uint8 pixels (n, H, W, 3), every caption of theirs (n_texts,)
        and, for each caption, its image's row in the pixels: int64 (n_texts,)."""
        if self._val_pixels is None:
            self._val_pixels = np.stack(list(self.decode(self.val_rows)))
        captions = [self.dataset.captions[r] for r in self.val_rows.tolist()]
        texts = [t for group in captions for t in group]
        owner = np.repeat(np.arange(len(captions), dtype=np.int64), [len(g) for g in captions])
        return self._val_pixels, texts, owner

    def decode(self, rows: np.ndarray) -> Iterator[np.ndarray]:
        """Prepared pixels of these rows, in order; kept in memory when the dataset fits."""
        cached = self._pixel_cache
        if cached is not None and all(r in cached for r in rows.tolist()):
            yield from (cached[r] for r in rows.tolist())
            return
        files = [FileInfo(self.dataset.images[r], 0, 0) for r in rows.tolist()]
        decoded = decode_files(
            self.dataset.root,
            files,
            prepare=self.encoder.prepare,
            min_side=self.encoder.min_side,
            workers=self.workers,
        )
        for row, result in zip(rows.tolist(), decoded, strict=True):
            if result.pixels is None:
                raise DatasetError(
                    f"{self.dataset.origins[row]}: image {self.dataset.images[row]} cannot be "
                    f"used ({result.error})"
                )
            if cached is not None:
                cached[row] = result.pixels
            yield result.pixels
