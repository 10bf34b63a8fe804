"""The seam through which files are encoded somewhere other than the indexer's own process.

The indexer plans (what is new, changed, renamed or gone: decided here, on the driver) and
commits (the catalog and the vectors, through `Collection.append_images`); a `FileEncoder`
only turns the files it is given into results, in their order, wherever it runs them
(`retrieval.cluster` runs them as Ray tasks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from index.collection import Collection

from .pipeline import Decoded
from .reports import ProgressCallback
from .scan import FileInfo


@dataclass(frozen=True)
class EncodeRequest:
    """What a FileEncoder is asked to do: read and encode `files` (relative to `root`), for
    `collection`, whose model they must be encoded with. A file whose content hash is in
    `known_hashes` is already embedded: report its hash (`Decoded.known`), do not encode it."""

    collection: Collection
    root: Path
    files: list[FileInfo]
    known_hashes: frozenset[str]
    batch_size: int | None
    workers: int | None
    draft: bool
    progress: ProgressCallback


@dataclass(frozen=True)
class EncodedBatch:
    """Results ready to commit together. `encoded` went through the model and `vectors`,
    float32 (len(encoded), d) L2-normalised, are their embeddings (None when none were);
    `others` are files that failed (`error`) or whose content is known (`known`).
    `seconds`: the wall time spent waiting for this batch, for the run's images/s.
    `resumed`: read back from an earlier run that was stopped, so not encoded by this one."""

    encoded: list[Decoded]
    vectors: np.ndarray | None
    others: list[Decoded]
    seconds: float = 0.0
    resumed: bool = False

    @property
    def newly_encoded(self) -> int:
        return 0 if self.resumed else len(self.encoded)


FileEncoder = Callable[[EncodeRequest], Iterable[EncodedBatch]]
