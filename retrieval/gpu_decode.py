"""JPEG decoding on the GPU (nvJPEG through torchvision), batched, with a per-file fallback.

The pipeline's workers still read and hash every file; a JPEG that nvJPEG can take (8-bit RGB
or greyscale, under the decompression-bomb cap) then travels to the device as bytes, is decoded
there in one batched call, turned upright from its EXIF orientation, resized and cropped as the
model expects, and stays on the device for the image tower. A file the batch cannot decode is
decoded alone; one nvJPEG refuses even then goes to the CPU decoder, and the batch goes on.

Everything here also runs with device "cpu" (torchvision decodes JPEG there too), which is how
the tests check it against Pillow without a GPU.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from .encoders.preprocess import crop_offsets, resized_size
from .errors import ImageReadError
from .images import DEFAULT_MAX_PIXELS, ORIENTATION_TAG

if TYPE_CHECKING:
    import torch

_NVJPEG_MODES = frozenset({"RGB", "L"})


@dataclass(frozen=True)
class JpegHeader:
    """What the header says: upright (width, height) and the EXIF orientation (1-8)."""

    width: int
    height: int
    orientation: int


def read_header(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> JpegHeader | None:
    """The header of a JPEG the device can decode, or None for any other file (the CPU
    decoder takes those). Raises ImageReadError for a file over the bomb cap."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "JPEG" or image.mode not in _NVJPEG_MODES:
                return None
            width, height = image.size
            orientation = image.getexif().get(ORIENTATION_TAG, 1)
    except (OSError, SyntaxError, ValueError):
        return None  # let the CPU decoder find the words for what is wrong
    if width * height > max_pixels:
        raise ImageReadError(
            name, f"{width}x{height} pixels is over the decompression-bomb cap of {max_pixels:,}"
        )
    if orientation not in range(1, 9):
        orientation = 1
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return JpegHeader(width, height, orientation)


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Turn a (C, H, W) image upright as ImageOps.exif_transpose does for this orientation."""
    import torch

    if orientation == 2:
        return image.flip(2)
    if orientation == 3:
        return image.flip(1).flip(2)
    if orientation == 4:
        return image.flip(1)
    if orientation == 5:
        return image.transpose(1, 2)
    if orientation == 6:
        return torch.rot90(image, -1, (1, 2))
    if orientation == 7:
        return image.transpose(1, 2).flip(1).flip(2)
    if orientation == 8:
        return torch.rot90(image, 1, (1, 2))
    return image


def resize_and_crop(image: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """open_clip's eval geometry on a (C, H, W) uint8 tensor: uint8 (H', W', C).

    The same sizes and crop as the Pillow path (retrieval.encoders.preprocess.resize_and_crop),
    with antialiased bicubic filtering, which follows Pillow's filter closely.
    """
    import torch.nn.functional as F

    height, width = size
    _, h, w = image.shape
    new_w, new_h = (width, height) if mode == "squash" else resized_size(w, h, height)
    if (new_h, new_w) != (h, w):
        resized = F.interpolate(
            image[None].float(), size=(new_h, new_w), mode="bicubic", antialias=True
        )[0]
        image = resized.round_().clamp_(0, 255).to(image.dtype)
    left, top = crop_offsets(new_w, new_h, size)
    return image[:, top : top + height, left : left + width].permute(1, 2, 0)


@dataclass(frozen=True)
class JpegJob:
    """One file for the device: its bytes, header and name (for messages)."""

    data: bytes
    header: JpegHeader
    name: str


class JpegDecoder:
    """Batched JPEG decoding on one device into the model's input geometry.

    fallback(data, name) decodes one file on the CPU into uint8 (H, W, 3) model input, or
    raises ImageReadError.
    """

    def __init__(
        self,
        device: str,
        size: tuple[int, int],
        mode: str,
        fallback: Callable[[bytes, str], np.ndarray],
    ) -> None:
        self.device = device
        self.size = size
        self.mode = mode
        self.fallback = fallback
        self.fallbacks = 0
        """How many files the device could not decode (the CPU did)."""

    def decode(self, jobs: Sequence[JpegJob]) -> list[torch.Tensor | ImageReadError]:
        """Per job, uint8 (H, W, 3) model input on the device, or why it cannot be read."""
        import torch

        decoded = self._decode_on_device([job.data for job in jobs])
        results: list[torch.Tensor | ImageReadError] = []
        for job, image in zip(jobs, decoded, strict=True):
            if image is not None and image.shape[0] == 3:
                upright = orient(image, job.header.orientation)
                results.append(resize_and_crop(upright, self.size, self.mode))
                continue
            self.fallbacks += 1
            try:
                pixels = self.fallback(job.data, job.name)
            except ImageReadError as e:
                results.append(e)
                continue
            results.append(torch.from_numpy(pixels.copy()).to(self.device))
        return results

    def _decode_on_device(self, data: list[bytes]) -> list[torch.Tensor | None]:
        """Decoded (3, H, W) images; None where the device cannot decode a file."""
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        encoded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in data]
        try:
            # One call for the batch: nvJPEG decodes it far faster than file by file.
            return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device))
        except RuntimeError:
            # One bad file fails the whole call; decoding one by one finds it.
            return [self._decode_one(tensor) for tensor in encoded]

    def _decode_one(self, encoded: torch.Tensor) -> torch.Tensor | None:
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            return None  # the caller decodes it on the CPU, which names what is wrong
