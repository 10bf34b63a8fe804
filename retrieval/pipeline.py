"""Parallel decoding of image files, overlapped with the model through a bounded window.

Worker threads read, hash and decode files while the caller encodes the previous batch;
Pillow and hashlib release the GIL for the heavy parts. At most `window` results are in
flight, so memory stays flat however large the collection.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import threading
from collections import deque
from collections.abc import Callable, Container, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from index.capture import CaptureTime

from .capture import capture_from_bytes, capture_from_image
from .errors import ImageReadError
from .gpu_decode import JpegHeader, read_header
from .images import DEFAULT_MAX_PIXELS, decode_image, read_image_file
from .scan import FileInfo


@dataclass(frozen=True)
class Decoded:
    """One file after reading.

    Exactly one of: `pixels` (uint8 (H, W, 3), ready for the model), `jpeg` (the bytes of a
    JPEG left for the GPU to decode, with its `header`), `known` (its content hash is already
    embedded, so it was not decoded), or `error` (why it cannot be read). A file that goes to
    the model comes with its `capture` time and camera, read from the header it opened.
    """

    file: FileInfo
    hash: str | None = None
    pixels: np.ndarray | None = None
    width: int | None = None
    height: int | None = None
    known: bool = False
    error: str | None = None
    jpeg: bytes | None = None
    header: JpegHeader | None = None
    capture: CaptureTime | None = None

    @property
    def decodable(self) -> bool:
        """Whether it goes to the model: decoded pixels, or a JPEG for the device."""
        return self.pixels is not None or self.jpeg is not None


def content_hash(data: bytes) -> str:
    """SHA-256 of a file's bytes: hardware-accelerated on current CPUs, twice blake2b's speed."""
    return hashlib.sha256(data).hexdigest()


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def warm_up(encoder: Any) -> None:
    """Start in the background what an index run would otherwise wait for after decoding: the
    image tower's session for repeated calls (ONNX Runtime builds it without the GIL) and the
    import of FAISS, which the last step needs. Both then overlap with the first decodes."""
    preload = getattr(encoder, "preload", None)
    if preload is not None:
        preload("image")
    threading.Thread(target=_import_faiss, name="import-faiss").start()


def _import_faiss() -> None:
    try:
        importlib.import_module("index.vector_index")
    except ImportError:
        return  # the same import fails again where it is needed, and is reported there


def decode_files(
    root: Path,
    files: Iterable[FileInfo],
    *,
    prepare: Callable[[Image.Image], np.ndarray],
    min_side: int | None,
    known_hashes: Container[str] = frozenset(),
    workers: int | None = None,
    window: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    jpeg_to_device: bool = False,
) -> Iterator[Decoded]:
    """Decode files in parallel, yielding results in the order of `files`.

    jpeg_to_device: leave JPEGs a device can decode undecoded (`jpeg` and `header` instead of
    `pixels`), for retrieval.gpu_decode.
    """
    workers = workers or default_workers()
    window = window or workers * 8

    def work(file: FileInfo) -> Decoded:
        return _decode_one(root, file, prepare, min_side, known_hashes, max_pixels, jpeg_to_device)

    pending: deque[Future[Decoded]] = deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
    try:
        for file in files:
            pending.append(pool.submit(work, file))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _decode_one(
    root: Path,
    file: FileInfo,
    prepare: Callable[[Image.Image], np.ndarray],
    min_side: int | None,
    known_hashes: Container[str],
    max_pixels: int,
    jpeg_to_device: bool = False,
) -> Decoded:
    try:
        data = read_image_file(root / file.path, file.path)
    except ImageReadError as e:
        return Decoded(file, error=e.reason)
    if not data:
        return Decoded(file, error="empty file (0 bytes)")
    digest = content_hash(data)
    if digest in known_hashes:
        return Decoded(file, hash=digest, known=True)
    try:
        header = read_header(data, file.path, max_pixels) if jpeg_to_device else None
        if header is not None:
            size = {"width": header.width, "height": header.height}
            capture = capture_from_bytes(data, file.mtime_ns)
            return Decoded(file, hash=digest, jpeg=data, header=header, capture=capture, **size)
        captured: list[CaptureTime] = []  # read from the header decode_image opens anyway
        image, (width, height) = decode_image(
            data, min_size=min_side, max_pixels=max_pixels, name=file.path,
            on_open=lambda img: captured.append(capture_from_image(img, file.mtime_ns)),
        )  # fmt: skip
        pixels = prepare(image)
    except ImageReadError as e:
        return Decoded(file, hash=digest, error=e.reason)
    capture = captured[0] if captured else capture_from_bytes(data, file.mtime_ns)  # RAW files
    return Decoded(file, hash=digest, pixels=pixels, width=width, height=height, capture=capture)
