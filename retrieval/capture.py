"""Reading when a photo was taken, and with which camera, from its EXIF header.

The time is EXIF DateTimeOriginal with OffsetTimeOriginal when the photo has one ('exif');
without an offset the wall-clock time is read as this machine's local time ('exif-local');
with no usable DateTimeOriginal it is the file's modification time ('mtime'). Reading never
fails: a broken header costs the photo its EXIF date, nothing more.
"""

from __future__ import annotations

import io
import re
import struct
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

from PIL import Image

from index.capture import SOURCE_EXIF, SOURCE_EXIF_LOCAL, SOURCE_MTIME, CaptureTime
from index.collection import Collection

from .reports import IndexProgress, ProgressCallback

EXIF_IFD = 0x8769
DATE_TIME_ORIGINAL = 0x9003
OFFSET_TIME_ORIGINAL = 0x9011
MAKE = 0x010F
MODEL = 0x0110

CHUNK = 1000
"""Images whose capture times commit together when a collection is dated after the fact."""

# What Pillow raises on a malformed EXIF block or header.
_BAD_HEADER = (OSError, SyntaxError, ValueError, TypeError, KeyError, IndexError, EOFError,
               struct.error, Image.DecompressionBombError)  # fmt: skip
_EXIF_DATE = re.compile(r"^\s*(\d{4})[:-](\d{2})[:-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_EXIF_OFFSET = re.compile(r"^\s*([+-])(\d{2}):?(\d{2})\s*$")


def capture_from_image(image: Image.Image, mtime_ns: int) -> CaptureTime:
    """The capture time and camera of an opened image (its pixels need not be decoded);
    mtime_ns: the file's modification time, used when it has no EXIF date."""
    try:
        exif = image.getexif()
        sub_ifd = exif.get_ifd(EXIF_IFD)
        camera = _camera(exif.get(MAKE), exif.get(MODEL))
        taken = _exif_time(sub_ifd.get(DATE_TIME_ORIGINAL), sub_ifd.get(OFFSET_TIME_ORIGINAL))
    except _BAD_HEADER:
        return file_time(mtime_ns)
    if taken is None:
        return file_time(mtime_ns, camera)
    moment, source = taken
    return CaptureTime(int(moment.timestamp()), _minutes(moment), source, camera)


def capture_from_bytes(data: bytes, mtime_ns: int) -> CaptureTime:
    """As capture_from_image, for a file's bytes; the file time when Pillow cannot open it
    (a RAW format that is not TIFF-based, say)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return capture_from_image(image, mtime_ns)
    except _BAD_HEADER:
        return file_time(mtime_ns)


def capture_from_file(path: Path, mtime_ns: int) -> CaptureTime:
    """As capture_from_image, for a file: Pillow reads its header, and no pixel is decoded."""
    try:
        with Image.open(path) as image:
            return capture_from_image(image, mtime_ns)
    except _BAD_HEADER:
        return file_time(mtime_ns)


def file_time(mtime_ns: int, camera: str | None = None) -> CaptureTime:
    """A capture time from a file's modification time, at this machine's offset then."""
    seconds = mtime_ns // 1_000_000_000
    return CaptureTime(seconds, _minutes(datetime.fromtimestamp(seconds).astimezone()),
                       SOURCE_MTIME, camera)  # fmt: skip


def fill_capture_times(
    collection: Collection, workers: int | None = None, progress: ProgressCallback | None = None
) -> int:
    """Read the capture time of every searchable image that has none yet (a collection made
    before capture times were stored, or a copy found by its content hash) from its header
    alone: nothing is decoded or encoded. Commits every CHUNK images, reporting progress
    ('dates') after each. Returns how many images were read. The caller holds the lock."""
    undated = collection.catalog.undated()
    root = collection.root
    with ThreadPoolExecutor(max_workers=workers or 8, thread_name_prefix="dates") as pool:
        for start in range(0, len(undated), CHUNK):
            chunk = undated[start : start + CHUNK]
            captures = pool.map(lambda u: capture_from_file(root / u.path, u.mtime_ns), chunk)
            with collection.catalog.transaction():
                for image, capture in zip(chunk, captures, strict=True):
                    collection.catalog.set_capture(image.id, capture)
            if progress is not None:
                progress(IndexProgress("dates", start + len(chunk), len(undated)))
    return len(undated)


def _exif_time(value: object, offset: object) -> tuple[datetime, str] | None:
    """DateTimeOriginal ('2023:07:14 18:30:00') as an aware datetime, and its source."""
    match = _EXIF_DATE.match(_text(value) or "")
    if match is None:
        return None
    try:
        wall = datetime(*(int(part) for part in match.groups()))  # type: ignore[misc]
    except ValueError:  # '0000:00:00 00:00:00' and other placeholders
        return None
    zone = _zone(_text(offset))
    if zone is None:
        return wall.astimezone(), SOURCE_EXIF_LOCAL
    return wall.replace(tzinfo=zone), SOURCE_EXIF


def _zone(offset: str | None) -> timezone | None:
    match = _EXIF_OFFSET.match(offset or "")
    if match is None:
        return None
    sign, hours, minutes = match.groups()
    total = int(hours) * 60 + int(minutes)
    if total > 18 * 60 or int(minutes) >= 60:
        return None
    return timezone(timedelta(minutes=-total if sign == "-" else total))


def _camera(make: object, model: object) -> str | None:
    """'Make Model', or the model alone when it already names the maker (NIKON D750)."""
    make_text, model_text = _text(make), _text(model)
    if not model_text:
        return make_text
    if not make_text or make_text.split()[0].lower() in model_text.lower():
        return model_text
    return f"{make_text} {model_text}"


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        return None
    return value.replace("\x00", " ").strip() or None


def _minutes(moment: datetime) -> int:
    offset = moment.utcoffset()
    return 0 if offset is None else int(offset.total_seconds() // 60)
