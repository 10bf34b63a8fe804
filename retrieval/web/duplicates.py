"""The web app's duplicates view: GET /api/duplicates, groups of files showing the same picture.

Finding the groups reads every stored embedding, so the answer is kept until the catalog
changes; asking again with the same threshold and folder costs nothing.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, Query
from pydantic import BaseModel

from ..duplicates import DEFAULT_THRESHOLD, DuplicateGroup, duplicate_groups
from ..folders import folder_prefix
from .engine import Engine

MAX_GROUPS = 1000


class DuplicateFileOut(BaseModel):
    id: int
    path: str
    size: int
    width: int | None
    height: int | None
    best: bool


class DuplicateGroupOut(BaseModel):
    group: int
    score: float
    files: list[DuplicateFileOut]


class DuplicatesOut(BaseModel):
    threshold: float
    groups_total: int
    """How many groups there are; `groups` holds at most `limit` of them."""
    groups: list[DuplicateGroupOut]


def add_duplicate_routes(app: FastAPI, engine: Engine) -> None:
    """Register GET /api/duplicates on the app."""
    answers = _Answers()

    @app.get("/api/duplicates", response_model=DuplicatesOut)
    def duplicates(
        threshold: Annotated[
            float, Query(ge=-1.0, le=1.0, description="Cosine at which files are the same.")
        ] = DEFAULT_THRESHOLD,
        folder: Annotated[str, Query(description="Only files under this folder.")] = "",
        limit: Annotated[int, Query(ge=1, le=MAX_GROUPS, description="Most groups.")] = 200,
    ) -> DuplicatesOut:
        """Groups of files that show the same picture (copies, resized or edited versions,
        RAW+JPEG pairs, burst frames), best first in each; nothing is ever deleted."""
        prefix = folder_prefix(folder)
        with engine.reading() as searcher:
            collection = searcher.collection
            key = (collection.catalog.version, threshold, prefix)
            groups = answers.get(key)
            if groups is None:
                groups = duplicate_groups(collection, threshold=threshold, prefix=prefix)
                answers.put(key, groups)
            root = collection.root
        return DuplicatesOut(
            threshold=threshold,
            groups_total=len(groups),
            groups=[_group_out(g, root) for g in groups[:limit]],
        )


def _group_out(group: DuplicateGroup, root: Path) -> DuplicateGroupOut:
    files = [
        DuplicateFileOut(
            id=f.id,
            path=f.path.relative_to(root).as_posix(),
            size=f.size,
            width=f.width,
            height=f.height,
            best=f.best,
        )
        for f in group.files
    ]
    return DuplicateGroupOut(group=group.number, score=round(group.score, 6), files=files)


class _Answers:
    """The last few answers, by (catalog version, threshold, folder)."""

    KEEP = 4

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answers: dict[tuple, list[DuplicateGroup]] = {}

    def get(self, key: tuple) -> list[DuplicateGroup] | None:
        with self._lock:
            return self._answers.get(key)

    def put(self, key: tuple, groups: list[DuplicateGroup]) -> None:
        with self._lock:
            self._answers[key] = groups
            while len(self._answers) > self.KEEP:
                self._answers.pop(next(iter(self._answers)))
