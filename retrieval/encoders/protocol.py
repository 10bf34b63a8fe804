"""What every encoder offers, whichever runtime is behind it (PyTorch or ONNX Runtime).

Code that only embeds (search, texts, the web app, the indexer) depends on this protocol, not on
a backend, so the torch-free query path never reaches a module that imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from index.manifest import ModelIdentity

from .preprocess import PreprocessCfg

if TYPE_CHECKING:
    from PIL import Image


class Encoder(Protocol):
    """An open_clip model ready to embed images and texts into one space.

    Images travel as uint8 (n, H, W, 3) arrays made by `prepare`; embeddings come back float32
    (n, dim), L2-normalised.
    """

    identity: ModelIdentity
    preprocess: PreprocessCfg
    device: str
    precision: str
    backend: str
    dim: int

    @property
    def weights_hash(self) -> str: ...

    @property
    def image_size(self) -> tuple[int, int]: ...

    @property
    def min_side(self) -> int: ...

    @property
    def preprocess_cfg(self) -> dict[str, Any]: ...

    def prepare(self, image: Image.Image) -> np.ndarray: ...

    def encode_images(self, pixels: Any) -> np.ndarray: ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...
