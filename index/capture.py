"""When each photo was taken, and with which camera: the catalog's capture columns.

`taken` is UTC epoch seconds; `taken_offset` the minutes east of UTC of the wall-clock time
the photo was taken at (its own, from EXIF, or this machine's zone where the photo gives none);
`taken_source` says where the time came from: 'exif' (DateTimeOriginal with its offset),
'exif-local' (DateTimeOriginal without one, read as this machine's local time) or 'mtime' (no
EXIF date: the file's modification time). A row whose source is NULL has not been read yet.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field

SOURCE_EXIF = "exif"
SOURCE_EXIF_LOCAL = "exif-local"
SOURCE_MTIME = "mtime"
SOURCES = (SOURCE_EXIF, SOURCE_EXIF_LOCAL, SOURCE_MTIME)


@dataclass(frozen=True)
class CaptureTime:
    """When a photo was taken (taken: UTC epoch seconds; offset: minutes east of UTC of its
    wall clock), where that came from (one of SOURCES), and its camera (None: unknown)."""

    taken: int
    offset: int
    source: str
    camera: str | None = None


@dataclass(frozen=True)
class CaptureSpan:
    """The earliest and latest capture times of a collection's images (None when none is
    known) and how many images each source dated; `unread` counts images not read yet."""

    earliest: CaptureTime | None
    latest: CaptureTime | None
    by_source: dict[str, int] = field(default_factory=dict)
    unread: int = 0


@dataclass(frozen=True)
class Undated:
    """An image whose capture time has not been read: its id, path and modification time."""

    id: int
    path: str
    mtime_ns: int


class CaptureColumns:
    """The catalog's methods for the capture columns (mixed into Catalog, which owns `_db`)."""

    _db: sqlite3.Connection

    def set_capture(self, item_id: int, capture: CaptureTime | None) -> None:
        """Record an item's capture time and camera (call inside a transaction); None leaves
        it unread, for a later run to read from the file's header."""
        if capture is None:
            return
        self._db.execute(
            "UPDATE items SET taken = ?, taken_offset = ?, taken_source = ?, camera = ? "
            "WHERE id = ?",
            (capture.taken, capture.offset, capture.source, capture.camera, int(item_id)),
        )

    def capture_of(self, ids: Iterable[int]) -> dict[int, CaptureTime]:
        """The capture times of those of these items that have one."""
        found = {}
        ids = list(dict.fromkeys(int(i) for i in ids))
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = self._db.execute(
                "SELECT id, taken, taken_offset, taken_source, camera FROM items "
                f"WHERE taken_source IS NOT NULL AND id IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            found.update({row[0]: CaptureTime(*row[1:]) for row in rows})
        return found

    def undated(self) -> list[Undated]:
        """The searchable images whose capture time has not been read yet, by id."""
        rows = self._db.execute(
            "SELECT id, path, mtime_ns FROM items "
            "WHERE status = 'ok' AND taken_source IS NULL ORDER BY id"
        )
        return [Undated(*row) for row in rows]

    def ids_taken(self, after: int | None = None, before: int | None = None) -> list[int]:
        """Ids of the searchable images taken at or after `after` and strictly before
        `before` (UTC epoch seconds; None: no bound). Images not dated yet match neither."""
        where, bounds = ["taken IS NOT NULL"], []
        if after is not None:
            where.append("taken >= ?")
            bounds.append(int(after))
        if before is not None:
            where.append("taken < ?")
            bounds.append(int(before))
        rows = self._db.execute(
            f"SELECT id FROM items WHERE {' AND '.join(where)} AND status = 'ok'", bounds
        )
        return [r[0] for r in rows]

    def capture_span(self) -> CaptureSpan:
        """The earliest and latest capture times, and the count of images per source."""
        ends = []
        for order in ("ASC", "DESC"):
            row = self._db.execute(
                "SELECT taken, taken_offset, taken_source, camera FROM items "
                f"WHERE status = 'ok' AND taken IS NOT NULL ORDER BY taken {order}, id LIMIT 1"
            ).fetchone()
            ends.append(CaptureTime(*row) if row else None)
        counts = dict(
            self._db.execute(
                "SELECT coalesce(taken_source, ''), COUNT(*) FROM items WHERE status = 'ok' "
                "GROUP BY taken_source"
            ).fetchall()
        )
        unread = counts.pop("", 0)
        return CaptureSpan(ends[0], ends[1], {s: counts.get(s, 0) for s in SOURCES}, unread)
