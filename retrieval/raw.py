"""Camera RAW files through LibRaw (rawpy): the embedded preview when it is large enough, else
the sensor data demosaiced, upright by the RAW's own orientation.

Most cameras embed a full-size JPEG beside the sensor data; decoding it is a JPEG decode, while
demosaicing costs a second or more per photo. A file LibRaw cannot read raises ImageReadError,
so it is skipped with its reason like any other bad image.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageReadError

RAW_EXTENSIONS = frozenset({".cr2", ".cr3", ".nef", ".arw", ".dng", ".raf", ".orf", ".rw2", ".pef"})
"""Canon, Nikon, Sony, Adobe DNG, Fujifilm, Olympus/OM, Panasonic and Pentax RAW files."""

ORIENTATION_TAG = 0x0112

# LibRaw's sizes.flip (bit 0: mirror left-right, bit 1: upside down, bit 2: transposed) as the
# EXIF orientation that describes the same turn.
_FLIP_TO_ORIENTATION = {0: 1, 1: 2, 2: 4, 3: 3, 4: 5, 5: 8, 6: 6, 7: 7}

# What Pillow does to make an image with this EXIF orientation upright (as exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def is_raw(name: str | Path | None) -> bool:
    """Whether a file name has a camera RAW extension."""
    return name is not None and Path(str(name)).suffix.lower() in RAW_EXTENSIONS


def decode_raw(
    source: Path | bytes, *, min_size: int | None, max_pixels: int, label: str
) -> tuple[Image.Image, tuple[int, int]]:
    """Decode a RAW file to an upright 8-bit sRGB image and the photo's full upright (w, h).

    min_size: the smallest side the caller needs (None: the full resolution). The embedded
    preview is used when its shorter side reaches it; otherwise LibRaw demosaics, at half size
    when that is still large enough. Raises ImageReadError naming the file and the reason.
    """
    import rawpy

    try:
        data = source if isinstance(source, bytes) else source.read_bytes()
    except PermissionError as e:
        raise ImageReadError(label, "permission denied") from e
    except OSError as e:
        raise ImageReadError(label, f"cannot read ({e.strerror or e})") from e
    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            sizes = raw.sizes
            width, height = sizes.width, sizes.height
            if width * height > max_pixels:
                raise ImageReadError(
                    label,
                    f"{width}x{height} pixels is over the decompression-bomb cap of "
                    f"{max_pixels:,} pixels",
                )
            orientation = _FLIP_TO_ORIENTATION.get(sizes.flip, 1)
            if orientation in (5, 6, 7, 8):
                width, height = height, width
            needed = min_size if min_size else min(width, height)
            image = _preview(raw, needed, orientation)
            if image is None:
                image = _demosaic(raw, needed)
            return image, (width, height)
    except ImageReadError:
        raise
    except rawpy.LibRawError as e:
        raise ImageReadError(label, f"LibRaw cannot read it ({_libraw_reason(e)})") from e
    except (MemoryError, ValueError) as e:
        raise ImageReadError(label, f"cannot decode the RAW data ({e})") from e


def _preview(raw: Any, needed: int, orientation: int) -> Image.Image | None:
    """The embedded preview, upright, if it has one whose shorter side is at least `needed`."""
    import rawpy

    try:
        thumb = raw.extract_thumb()
    except rawpy.LibRawError:
        return None  # no preview, or one LibRaw cannot hand over: demosaic instead
    if thumb.format == rawpy.ThumbFormat.BITMAP:
        image = Image.fromarray(np.ascontiguousarray(thumb.data, dtype=np.uint8)).convert("RGB")
        return _turned(image, orientation) if min(image.size) >= needed else None
    try:
        with Image.open(io.BytesIO(thumb.data)) as jpeg:
            if jpeg.format != "JPEG" or min(jpeg.size) < needed:
                return None
            own = jpeg.getexif().get(ORIENTATION_TAG, 1)
            jpeg.draft("RGB", (needed, needed))
            jpeg.load()
            if own in _UPRIGHT:
                return ImageOps.exif_transpose(jpeg).convert("RGB")
            return _turned(jpeg.convert("RGB"), orientation)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None  # a damaged preview does not make the sensor data unreadable


def _demosaic(raw: Any, needed: int) -> Image.Image:
    """The sensor data as 8-bit sRGB with the camera's white balance; LibRaw applies the flip."""
    sizes = raw.sizes
    half = min(sizes.width, sizes.height) // 2 >= needed
    rgb = raw.postprocess(use_camera_wb=True, half_size=half, output_bps=8)
    return Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB")


def _turned(image: Image.Image, orientation: int) -> Image.Image:
    step = _UPRIGHT.get(orientation)
    return image.transpose(step) if step is not None else image


def _libraw_reason(error: Exception) -> str:
    text = str(error)
    if text.startswith("b'") or text.startswith('b"'):
        text = text[2:-1]  # rawpy passes LibRaw's message on as bytes
    return text or type(error).__name__
