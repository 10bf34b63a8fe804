"""The user's cache directory: generated datasets and embedded vocabularies."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$RETRIEVAL_CACHE if set, else ~/.cache/retrieval (created on demand by its users)."""
    configured = os.environ.get("RETRIEVAL_CACHE")
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "retrieval"
