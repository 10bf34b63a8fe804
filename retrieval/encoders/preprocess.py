"""A model's image preprocessing as one config, its resize-and-crop geometry without torchvision,
and the L2 normalisation every embedding goes through. Nothing here imports torch."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ModelLoadError

if TYPE_CHECKING:
    from PIL import Image

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class PreprocessCfg:
    """open_clip's PreprocessCfg (open_clip/transform.py): the same fields in the same order, so
    that `as_dict` is the `preprocess_cfg` open_clip records with a model.

    size: int (square) or (height, width); mean and std: per channel, for pixels in [0, 1].
    """

    size: int | tuple[int, int]
    mode: str = "RGB"
    mean: tuple[float, ...] = OPENAI_MEAN
    std: tuple[float, ...] = OPENAI_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: int = 0

    @classmethod
    def from_dict(cls, recorded: Mapping[str, Any], **missing: Any) -> PreprocessCfg:
        """The config open_clip recorded (a model's `preprocess_cfg`, or a stored copy of it);
        `missing` gives the values of keys it lacks. Unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        values = {**missing, **{k: v for k, v in recorded.items() if k in names}}
        if isinstance(values.get("size"), list):
            values["size"] = tuple(values["size"])
        for key in ("mean", "std"):
            if key in values:
                value = values[key]
                values[key] = tuple(value) if isinstance(value, (list, tuple)) else (value,) * 3
        return cls(**values)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the model's input."""
        if isinstance(self.size, int):
            return (self.size, self.size)
        return (int(self.size[0]), int(self.size[1]))

    @property
    def min_side(self) -> int:
        """The smallest image side the preprocessing needs before it resizes."""
        return max(self.image_size)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, as open_clip records it (tuples become lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


class PreprocessedInput:
    """What both encoders say of their input, read from their `preprocess` (a PreprocessCfg)."""

    preprocess: PreprocessCfg

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the model's input."""
        return self.preprocess.image_size

    @property
    def mean(self) -> tuple[float, ...]:
        return self.preprocess.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.preprocess.std

    @property
    def preprocess_cfg(self) -> dict[str, Any]:
        """The preprocessing as open_clip records it (JSON-ready)."""
        return self.preprocess.as_dict()

    @property
    def min_side(self) -> int:
        """The smallest image side the preprocessing needs before it resizes."""
        return self.preprocess.min_side


def resized_size(width: int, height: int, target: int) -> tuple[int, int]:
    """(width, height) after open_clip's 'shortest' resize: the shorter side becomes target, the
    longer keeps the aspect ratio and is truncated (torchvision's size rule)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = target, int(target * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def crop_offsets(width: int, height: int, size: tuple[int, int]) -> tuple[int, int]:
    """(left, top) of a centre crop of size (height, width) out of a width x height image."""
    return round((width - size[1]) / 2.0), round((height - size[0]) / 2.0)


def resize_and_crop(image: Image.Image, size: tuple[int, int], mode: str) -> np.ndarray:
    """open_clip's eval geometry on a PIL image, without torchvision: uint8 (H, W, 3).

    'shortest': the shorter side to the target with bicubic, then a centre crop; 'squash':
    straight to the target size.
    """
    from PIL import Image  # imported here: a text query never needs Pillow

    height, width = size
    if mode == "squash":
        return np.asarray(image.resize((width, height), Image.Resampling.BICUBIC))
    if mode != "shortest" or height != width:
        raise ModelLoadError(f"the ONNX backend does not support resize mode {mode!r} yet")
    new_size = resized_size(*image.size, height)
    if new_size != image.size:
        image = image.resize(new_size, Image.Resampling.BICUBIC)
    left, top = crop_offsets(*image.size, size)
    return np.asarray(image.crop((left, top, left + width, top + height)))
