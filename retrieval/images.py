"""Reading image files: EXIF orientation, draft-mode JPEG decoding, every mode to RGB; camera
RAW files go to retrieval.raw.

Decoding never raises anything but ImageReadError for a bad file, so one unreadable photo
costs one line in a report and nothing more.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageReadError
from .raw import RAW_EXTENSIONS, decode_raw, is_raw

IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".dib",
        ".tif", ".tiff", ".heic", ".heif", ".avif",
    }
) | RAW_EXTENSIONS  # fmt: skip

ORIENTATION_TAG = 0x0112

DEFAULT_MAX_PIXELS = 2 * 89_478_485
"""Decompression-bomb cap (Pillow's own error threshold): larger images are refused before any
pixel is decoded. It admits 100-megapixel cameras."""

_heif_registered = False


def register_heif() -> None:
    """Teach Pillow to open HEIC/HEIF, on first use rather than at import."""
    global _heif_registered
    if not _heif_registered:
        from pillow_heif import register_heif_opener

        register_heif_opener()
        # Pillow enforces its own bomb check at open(); ours is explicit and comes with a message.
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        _heif_registered = True


def load_image(
    source: Path | bytes,
    *,
    min_size: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> Image.Image:
    """Decode an image file to an upright RGB image.

    min_size: the smallest side the caller needs; JPEGs are then decoded at the smallest DCT
    scale (1/2, 1/4, 1/8) whose result still has both sides at least that large.
    Raises ImageReadError naming the file and the reason.
    """
    return decode_image(source, min_size=min_size, max_pixels=max_pixels, name=name)[0]


def decode_image(
    source: Path | bytes,
    *,
    min_size: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
    on_open: Callable[[Image.Image], None] | None = None,
) -> tuple[Image.Image, tuple[int, int]]:
    """As load_image, also returning the file's full upright (width, height).

    on_open: called with the opened file before its pixels are decoded, to read its header
    (not for RAW files, which LibRaw opens)."""
    register_heif()
    label = name or (str(source) if isinstance(source, Path) else "image")
    if is_raw(source if isinstance(source, Path) else name):
        return decode_raw(source, min_size=min_size, max_pixels=max_pixels, label=label)
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with Image.open(fp) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ImageReadError(
                    label,
                    f"{width}x{height} pixels is over the decompression-bomb cap of "
                    f"{max_pixels:,} pixels",
                )
            if img.getexif().get(ORIENTATION_TAG, 1) in (5, 6, 7, 8):
                width, height = height, width
            if on_open is not None:
                on_open(img)
            if min_size and img.format == "JPEG":
                # draft() picks the largest DCT scale that keeps both sides >= the request.
                img.draft("RGB", (min_size, min_size))
            img.load()
            upright = ImageOps.exif_transpose(img)
            return to_rgb(upright), (width, height)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageReadError(label, f"over the decompression-bomb cap ({e})") from e
    except UnidentifiedImageError as e:
        raise ImageReadError(label, "not an image (or a format Pillow cannot read)") from e
    except PermissionError as e:
        raise ImageReadError(label, "permission denied") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # Pillow reports truncated and corrupt data as OSError / SyntaxError / ValueError.
        raise ImageReadError(label, f"cannot decode ({e})") from e


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, compositing transparency onto white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _high_depth_to_rgb(img)
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "L" and "transparency" in img.info:
        return to_rgb(img.convert("LA"))
    if mode == "RGB" and "transparency" in img.info:
        return to_rgb(img.convert("RGBA"))
    return img.convert("RGB")


def _high_depth_to_rgb(img: Image.Image) -> Image.Image:
    """Grey images of 16 or 32 bits: scale to 8 bits instead of clipping at 255."""
    values = np.asarray(img).astype(np.float64)
    if img.mode == "F":
        top = 1.0 if values.max(initial=0.0) <= 1.0 else 65535.0
    elif img.mode == "I" and values.max(initial=0) > 65535:
        top = float(values.max())
    else:
        top = 65535.0
    grey = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


_FILE_KINDS = {
    stat.S_IFIFO: "FIFO",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFSOCK: "socket",
    stat.S_IFDIR: "folder",
}


def read_image_file(path: Path, name: str | None = None) -> bytes:
    """The bytes of a regular file (symlinks followed), never more than its size when opened.

    Anything else (a FIFO, a device, a socket) is refused without being opened, since reading
    one can block for ever or never end; a file that grows while it is read is read up to the
    size it had. Raises ImageReadError naming the file and the reason.
    """
    label = name or str(path)
    try:
        _require_regular(os.stat(path), label)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
        try:
            opened = os.fstat(fd)
            _require_regular(opened, label)  # replaced between the stat and the open
            chunks = []
            left = opened.st_size
            while left > 0 and (chunk := os.read(fd, left)):
                chunks.append(chunk)
                left -= len(chunk)
        finally:
            os.close(fd)
    except PermissionError as e:
        raise ImageReadError(
            label, "permission denied; make the file readable and index again"
        ) from e
    except OSError as e:
        raise ImageReadError(label, f"cannot read ({e.strerror or e})") from e
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _require_regular(info: os.stat_result, label: str) -> None:
    if not stat.S_ISREG(info.st_mode):
        kind = _FILE_KINDS.get(stat.S_IFMT(info.st_mode), "special file")
        raise ImageReadError(label, f"not a regular file: {kind}")
