"""The image files the web app serves: only catalogued ones, only inside the root.

A request names an item by its catalog id; the path comes from the catalog, never from the
request, and is served only if its real location (symlinks resolved) lies under the root.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from index.atomic import write_bytes_atomic
from index.catalog import STATUS_OK, Catalog

from ..errors import ImageReadError
from ..images import load_image
from ..raw import is_raw
from .errors import NotServable

THUMBNAIL_SIDE = 320
"""Thumbnails fit in a square this many pixels wide (sharp on a 2x screen at 160 CSS px)."""

FULL_SIDE = 4096
"""Images a browser cannot show natively are re-encoded as JPEG at most this large."""

RAW_VIEW_SIDE = 2048
"""A RAW file is shown from its embedded preview when that is at least this large (most cameras
embed a full-size one); a RAW with a smaller one, or none, is demosaiced for the viewer."""

BROWSER_FORMATS: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (8, b"WEBP", "image/webp"),  # after b"RIFF" and the length
    (0, b"BM", "image/bmp"),
    (4, b"ftypavif", "image/avif"),
    (4, b"ftypavis", "image/avif"),
)
"""(offset, magic bytes, media type) of the formats browsers show as they are. The type comes
from the bytes, never the name: PNG bytes named .jpg go out as image/png."""


@dataclass(frozen=True)
class ServedFile:
    """A catalogued image file, checked to lie inside the root. etag: its content hash."""

    id: int
    path: Path
    relative: str
    etag: str


def resolve_item(catalog: Catalog, root: Path, item_id: int) -> ServedFile:
    """The file of an indexed item, or NotServable (404 unknown, 403 outside the root)."""
    item = catalog.get(item_id)
    if item is None or item.status != STATUS_OK:
        raise NotServable(f"no indexed image has id {item_id}")
    real_root = root.resolve()
    real = (root / item.path).resolve()
    if not real.is_relative_to(real_root):
        raise NotServable(f"image {item_id} lies outside the indexed folder", status=403)
    if not real.is_file():
        raise NotServable(f"image {item_id} ({item.path}) is no longer on disk")
    return ServedFile(item_id, real, item.path, item.hash or f"{item.size}-{item.mtime_ns}")


def thumbnail(file: ServedFile, cache_dir: Path) -> bytes:
    """A JPEG thumbnail of the upright image, made once and cached by content hash.

    A cache that cannot be written (a read-only collection) costs only the caching.
    """
    cached = cache_dir / file.etag[:2] / f"{file.etag}-{THUMBNAIL_SIDE}.jpg"
    if cached.is_file():
        return cached.read_bytes()
    data = _jpeg(load_image(file.path, min_size=THUMBNAIL_SIDE), THUMBNAIL_SIDE, quality=82)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(cached, data)
    except OSError:
        return data  # read-only collection: serve it uncached
    return data


def browser_type(file: ServedFile) -> str | None:
    """The media type to send the file as it is, read from its first bytes, or None when a
    browser cannot show it (or it cannot be read: it is then decoded, and the error told)."""
    try:
        with open(file.path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    for offset, magic, media_type in BROWSER_FORMATS:
        if head[offset : offset + len(magic)] == magic:
            return media_type
    return None


def as_jpeg(file: ServedFile) -> bytes:
    """The upright image as JPEG, at most FULL_SIDE a side (for HEIC, TIFF, RAW and the like)."""
    needed = RAW_VIEW_SIDE if is_raw(file.path) else FULL_SIDE
    return _jpeg(load_image(file.path, min_size=needed), FULL_SIDE, quality=90)


def _jpeg(image: Image.Image, side: int, *, quality: int) -> bytes:
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality, optimize=True)
    return out.getvalue()


def unreadable(file: ServedFile, error: ImageReadError) -> NotServable:
    return NotServable(f"image {file.id} cannot be decoded: {error.reason}", status=422)
