"""What the web app's requests share: one searcher with a warm encoder, the turns they take on
it, and the background work (the tag vocabulary) that uses the encoder only while requests leave
it alone."""

from __future__ import annotations

import atexit
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..encoders.protocol import Encoder
from ..errors import RetrievalError
from ..search import Searcher
from ..vocabulary import vocabulary

UPLOADS_DECODED_AT_ONCE = max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class FolderCount:
    """A folder holding indexed images (relative to the root, POSIX) and how many, subfolders
    included."""

    folder: str
    images: int


class Engine:
    """What requests share: one searcher with a warm encoder.

    Requests run in a thread pool. They take turns on the encoder (on a CPU, concurrent runs
    only fight over the cores) and, separately, on the collection (one SQLite connection, and
    search structures kept in memory between requests), so one request's search overlaps the
    next one's encoding. Always the encoder first, then the collection.
    """

    def __init__(self, searcher: Searcher) -> None:
        self._searcher = searcher
        self.directory = searcher.collection.dir
        self.encoder: Encoder = searcher.encoder
        self.encoder.encode_texts(["warm up"])  # the first run of a session allocates; pay now
        self._encoding = threading.Lock()
        self._reading = threading.Lock()
        self._decoding = threading.BoundedSemaphore(UPLOADS_DECODED_AT_ONCE)
        self._folders: tuple[int, list[FolderCount]] = (-1, [])
        self._last_request = 0.0
        self.tags_ready = threading.Event()
        self.tags_error: str | None = None
        self._stopping = threading.Event()
        self._tags = threading.Thread(target=self._prepare_tags, name="tags", daemon=True)
        self._tags.start()
        # A thread still inside the model when the interpreter exits aborts the process.
        atexit.register(self.close)

    def close(self) -> None:
        """Stop the background work (after its current small batch) and wait for it."""
        self._stopping.set()
        self._tags.join()

    def _prepare_tags(self) -> None:
        """Embed the built-in tag vocabulary (ImageNet's classes) once per model, in the
        background: on a CPU that is a minute or two of text encoding. It works only while no
        request has used the encoder for a second, a small batch at a time, so a search waits
        at most for one small batch."""
        try:
            vocabulary(_WhenIdle(self.encoder, self._encoding, self._wait_until_idle))
        except _Stopped:
            return  # the app is closing; the vocabulary is finished by the next start
        except RetrievalError as e:
            self.tags_error = str(e)
        finally:
            self.tags_ready.set()

    @contextmanager
    def encoding(self) -> Iterator[Searcher]:
        self._last_request = time.monotonic()
        with self._encoding:
            yield self._searcher
        self._last_request = time.monotonic()

    def _wait_until_idle(self, quiet_s: float = 1.0) -> None:
        """Return when no request has used the encoder for quiet_s; raise _Stopped when the
        app is closing."""
        while (wait := self._last_request + quiet_s - time.monotonic()) > 0:
            if self._stopping.wait(wait):
                break
        if self._stopping.is_set():
            raise _Stopped

    @contextmanager
    def decoding(self) -> Iterator[Searcher]:
        """A turn to decode an upload, apart from the encoder's: a few at a time, since each may
        hold an image as large as the decompression-bomb cap allows."""
        with self._decoding:
            yield self._searcher

    @contextmanager
    def reading(self) -> Iterator[Searcher]:
        with self._reading:
            yield self._searcher

    def folders(self) -> list[FolderCount]:
        """Every folder holding indexed images (with its images, subfolders included)."""
        with self.reading() as searcher:
            catalog = searcher.collection.catalog
            version = catalog.version
            if self._folders[0] == version:
                return self._folders[1]
            paths = [item.path for item in catalog.items() if item.status == "ok"]
        counts: Counter[str] = Counter()
        for path in paths:
            parts = path.split("/")[:-1]
            counts.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        folders = [FolderCount(folder=f, images=n) for f, n in sorted(counts.items())]
        self._folders = (version, folders)
        return folders


class _Stopped(Exception):
    """Background work was asked to stop."""


class _WhenIdle:
    """An encoder for background work: before each small batch of texts it waits until the
    app's requests leave the encoder alone, then takes the encoder's lock for that batch."""

    BATCH = 8

    def __init__(
        self, encoder: Encoder, lock: threading.Lock, wait_until_idle: Callable[[], None]
    ) -> None:
        self._encoder = encoder
        self._lock = lock
        self._wait_until_idle = wait_until_idle

    def __getattr__(self, name: str) -> Any:
        return getattr(self._encoder, name)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        parts = []
        for start in range(0, len(texts), self.BATCH):
            self._wait_until_idle()
            with self._lock:
                parts.append(self._encoder.encode_texts(texts[start : start + self.BATCH]))
        return np.concatenate(parts)
