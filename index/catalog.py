"""The SQLite catalog: one row per file, keyed by a stable int64 id that FAISS also uses."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .capture import CaptureColumns
from .database import Database, storage_error
from .errors import CollectionTooNew
from .migrations import MIGRATIONS

STATUS_OK = "ok"
STATUS_ERROR = "error"
STATUS_STALE = "stale"
"""An item whose stored embedding was found damaged: the next index run encodes it again."""


IMAGE = "image"
TEXT = "text"
# Per kind of item: the meta keys of its version counter and of its next free embedding row.
_COUNTERS = {IMAGE: ("version", "next_row"), TEXT: ("text_version", "text_next_row")}


@dataclass(frozen=True)
class Item:
    """One catalog row. `row` is the item's slot in the embedding store (None for errors)."""

    id: int
    path: str
    size: int
    mtime_ns: int
    hash: str | None
    width: int | None
    height: int | None
    status: str
    error: str | None
    row: int | None


_COLUMNS = "id, path, size, mtime_ns, hash, width, height, status, error, row"


class Catalog(CaptureColumns):
    """The catalog of one collection.

    Writes happen inside `transaction()`, each of which bumps `version` when it changes
    vectors, so a FAISS index saved at one version is known to be stale at another.
    Capture times and cameras: see CaptureColumns.
    """

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self._in_transaction = False
        try:
            if readonly:
                uri = f"{self.path.resolve().as_uri()}?mode=ro"
                self._db = _connect_readonly(uri, self.path)
                schema = self._db.execute("PRAGMA user_version").fetchone()[0]
                if schema < len(MIGRATIONS):
                    # An older catalog: upgrade it once through a writing connection.
                    self._db.close()
                    Catalog(self.path).close()
                    self._db = _connect_readonly(uri, self.path)
                elif schema > len(MIGRATIONS):
                    raise CollectionTooNew(
                        f"{self.path} was written by a newer version of retrieval (schema "
                        f"{schema}); upgrade retrieval to use it"
                    )
            else:
                connection = sqlite3.connect(self.path, isolation_level=None, timeout=30)
                connection.text_factory = _text
                self._db = Database(connection, self.path)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._migrate()
        except sqlite3.DatabaseError as e:
            raise storage_error(self.path, e) from e

    def close(self) -> None:
        self._db.close()

    def _migrate(self) -> None:
        current = self._db.execute("PRAGMA user_version").fetchone()[0]
        if current > len(MIGRATIONS):
            raise CollectionTooNew(
                f"{self.path} was written by a newer version of retrieval (schema {current}); "
                "upgrade retrieval to use it"
            )
        for version in range(current, len(MIGRATIONS)):
            with self.transaction():
                for statement in _split_sql(MIGRATIONS[version]):
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {version + 1}")

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """One atomic write: everything inside commits together or not at all."""
        return self._begin("BEGIN IMMEDIATE")

    def snapshot(self) -> contextlib.AbstractContextManager[None]:
        """Reads inside see one committed state, whatever a writer commits meanwhile."""
        return self._begin("BEGIN")

    @contextlib.contextmanager
    def _begin(self, statement: str) -> Iterator[None]:
        if self._in_transaction:  # nested: the outer one commits
            yield
            return
        self._db.execute(statement)
        self._in_transaction = True
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # SQLite ends some failed transactions itself
                self._db.execute("ROLLBACK")
            raise
        finally:
            self._in_transaction = False

    # -- reading ---------------------------------------------------------------------------

    @property
    def version(self) -> int:
        """The image version: it changes with every commit that changes image vectors."""
        return int(self._meta("version"))

    def version_of(self, kind: str) -> int:
        return int(self._meta(_COUNTERS[kind][0]))

    def _meta(self, key: str) -> str:
        return self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0]

    def meta_value(self, key: str) -> str | None:
        """A value of the meta table, or None when it holds none under key."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def integrity(self) -> list[str]:
        """What SQLite's integrity check finds wrong with the file (empty when nothing)."""
        found = [r[0] for r in self._db.execute("PRAGMA integrity_check")]
        return [] if found == ["ok"] else found

    def error_stat(self, path: str) -> tuple[int | None, int | None]:
        """(ctime_ns, mode) recorded for a file skipped as unreadable."""
        row = self._db.execute(
            f"SELECT ctime_ns, mode FROM items WHERE path = {_NAME}", (_name(path),)
        )
        return row.fetchone() or (None, None)

    def items(self) -> list[Item]:
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM items ORDER BY id").fetchall()
        return [Item(*r) for r in rows]

    def get(self, item_id: int) -> Item | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM items WHERE id = ?", (item_id,)).fetchone()
        return Item(*row) if row else None

    def _where_in(self, select: str, column: str, values: Iterable[object]) -> Iterator[tuple]:
        """Rows of `select ... WHERE column IN (values)`, in chunks SQLite accepts."""
        values = list(dict.fromkeys(values))
        for start in range(0, len(values), 500):
            chunk = values[start : start + 500]
            marks = ",".join("?" * len(chunk))
            yield from self._db.execute(f"{select} WHERE {column} IN ({marks})", chunk)

    def by_ids(self, ids: Iterable[int]) -> dict[int, Item]:
        rows = self._where_in(f"SELECT {_COLUMNS} FROM items", "id", (int(i) for i in ids))
        return {row[0]: Item(*row) for row in rows}

    def vector_rows(self, kind: str = IMAGE) -> tuple[list[int], list[int]]:
        """(ids, rows) of every image (or text) that has an embedding, ordered by id."""
        if kind == TEXT:
            pairs = self._db.execute("SELECT id, row FROM texts ORDER BY id").fetchall()
        else:
            pairs = self._db.execute(
                "SELECT id, row FROM items WHERE status = ? ORDER BY id", (STATUS_OK,)
            ).fetchall()
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def rows_of(self, ids: np.ndarray, kind: str = IMAGE) -> np.ndarray:
        """The embedding rows int64 (n,) of these image (or text) ids; -1 for an unknown id."""
        table = "texts" if kind == TEXT else "items"
        found = dict(self._where_in(f"SELECT id, row FROM {table}", "id", (int(i) for i in ids)))
        return np.array([found.get(int(i), -1) for i in ids], dtype=np.int64)

    def text_ids(self, texts: Iterable[str]) -> dict[str, int]:
        """The ids of those texts that the catalog already holds."""
        return dict(self._where_in("SELECT text, id FROM texts", "text", texts))

    def texts_by_ids(self, ids: Iterable[int]) -> dict[int, str]:
        return dict(self._where_in("SELECT id, text FROM texts", "id", (int(i) for i in ids)))

    def count_vectors(self, kind: str = IMAGE) -> int:
        """How many images (or texts) have an embedding."""
        return self.count(STATUS_OK) if kind == IMAGE else self.count_texts()

    def count_texts(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM texts").fetchone()[0]

    def ids_under(self, prefix: str) -> list[int]:
        """Ids of the items at `prefix` or below it (a relative POSIX path, '' for all)."""
        prefix = prefix.strip("/")
        if not prefix:
            return [r[0] for r in self._db.execute("SELECT id FROM items WHERE status = 'ok'")]
        # '0' sorts right after '/', so this range is exactly the paths that start with prefix/.
        rows = self._db.execute(
            f"SELECT id FROM items WHERE status = 'ok' AND (path = {_NAME} OR "
            f"(path >= {_NAME} AND path < {_NAME}))",
            (_name(prefix), _name(prefix + "/"), _name(prefix + "0")),
        )
        return [r[0] for r in rows]

    def errors(self) -> list[Item]:
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM items WHERE status = ? ORDER BY path", (STATUS_ERROR,)
        )
        return [Item(*r) for r in rows]

    def count(self, status: str = STATUS_OK) -> int:
        return self._db.execute(
            "SELECT COUNT(*) FROM items WHERE status = ?", (status,)
        ).fetchone()[0]

    def next_row(self, kind: str = IMAGE) -> int:
        return int(self._meta(_COUNTERS[kind][1]))

    # -- writing (call inside transaction()) -------------------------------------------------

    def _bump(self, kind: str = IMAGE) -> None:
        key = _COUNTERS[kind][0]
        self._db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = ?", (key,))

    def reserve_rows(self, n: int, kind: str = IMAGE) -> int:
        """Claim n consecutive embedding slots of images (or texts); returns the first."""
        first = self.next_row(kind)
        self._db.execute(
            "UPDATE meta SET value = ? WHERE key = ?", (str(first + n), _COUNTERS[kind][1])
        )
        return first

    def put_texts(self, texts: list[str], first_row: int) -> list[int]:
        """Insert new texts, embedded at rows first_row, first_row + 1, ...; returns their ids."""
        ids = []
        for offset, text in enumerate(texts):
            cursor = self._db.execute(
                "INSERT INTO texts (text, row) VALUES (?, ?)", (text, first_row + offset)
            )
            ids.append(int(cursor.lastrowid))
        self._bump(TEXT)
        return ids

    def put_ok(
        self,
        path: str,
        size: int,
        mtime_ns: int,
        content_hash: str,
        width: int,
        height: int,
        row: int,
    ) -> int:
        """Insert or replace the item at path with an embedded file; returns its id.

        A replaced path gets a new id, so a stale FAISS index can never return it by mistake.
        """
        self._db.execute(f"DELETE FROM items WHERE path = {_NAME}", (_name(path),))
        cursor = self._db.execute(
            "INSERT INTO items (path, size, mtime_ns, hash, width, height, status, error, row) "
            f"VALUES ({_NAME}, ?, ?, ?, ?, ?, ?, NULL, ?)",
            (_name(path), size, mtime_ns, content_hash, width, height, STATUS_OK, row),
        )
        self._bump()
        return int(cursor.lastrowid)

    def put_error(
        self,
        path: str,
        size: int,
        mtime_ns: int,
        content_hash: str | None,
        error: str,
        *,
        ctime_ns: int | None = None,
        mode: int | None = None,
    ) -> None:
        """Record a file that cannot be read; its ctime and mode tell when a chmod (which
        leaves the mtime) may have made it readable."""
        changed = self._db.execute(
            f"SELECT status FROM items WHERE path = {_NAME}", (_name(path),)
        ).fetchone() == (STATUS_OK,)
        self._db.execute(f"DELETE FROM items WHERE path = {_NAME}", (_name(path),))
        self._db.execute(
            "INSERT INTO items (path, size, mtime_ns, hash, status, error, ctime_ns, mode) "
            f"VALUES ({_NAME}, ?, ?, ?, ?, ?, ?, ?)",
            (_name(path), size, mtime_ns, content_hash, STATUS_ERROR, error, ctime_ns, mode),
        )
        if changed:
            self._bump()

    def touch(self, item_id: int, size: int, mtime_ns: int) -> None:
        """Record new stat figures for an item whose content did not change."""
        self._db.execute(
            "UPDATE items SET size = ?, mtime_ns = ? WHERE id = ?", (size, mtime_ns, item_id)
        )

    def move(self, item_id: int, path: str, size: int, mtime_ns: int) -> None:
        """Give an item a new path (a rename); its id and embedding stay."""
        self._db.execute(
            f"UPDATE items SET path = {_NAME}, size = ?, mtime_ns = ? WHERE id = ?",
            (_name(path), size, mtime_ns, item_id),
        )

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def mark_stale(self, ids: Iterable[int]) -> None:
        """Mark items whose embeddings are damaged: no longer searched, and encoded again by
        the next index run."""
        pairs = [(STATUS_STALE, int(i)) for i in ids]
        self._db.executemany("UPDATE items SET status = ?, row = NULL WHERE id = ?", pairs)
        self._bump()

    def delete_texts(self, ids: Iterable[int]) -> None:
        self._db.executemany("DELETE FROM texts WHERE id = ?", [(int(i),) for i in ids])
        self._bump(TEXT)

    def move_rows(self, kind: str, moves: dict[int, int], next_row: int) -> None:
        """Point every image (or text) at row old to row moves[old]; next_row becomes the
        first free row. Items of a row not in moves lose it (they have no embedding)."""
        table = "texts" if kind == TEXT else "items"
        self._db.execute("CREATE TEMP TABLE moves (old INTEGER PRIMARY KEY, new INTEGER)")
        self._db.executemany("INSERT INTO moves VALUES (?, ?)", list(moves.items()))
        self._db.execute(
            f"UPDATE {table} SET row = (SELECT new FROM moves WHERE old = {table}.row) "
            "WHERE row IS NOT NULL"
        )
        self._db.execute("DROP TABLE moves")
        self._db.execute(
            "UPDATE meta SET value = ? WHERE key = ?", (str(next_row), _COUNTERS[kind][1])
        )

    def delete(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        if not ids:
            return
        self._db.executemany("DELETE FROM items WHERE id = ?", [(int(i),) for i in ids])
        self._bump()


def _connect_readonly(uri: str, path: Path) -> Database:
    # A reader may be shared by threads that take turns (the web app serialises its reads).
    connection = sqlite3.connect(
        uri, uri=True, isolation_level=None, timeout=30, check_same_thread=False
    )
    connection.text_factory = _text
    return Database(connection, path)


# -- file names that are not UTF-8 ------------------------------------------------------------
# A path is stored as the file name's own bytes, as TEXT: for a UTF-8 name (every row written
# before) exactly what was stored before; for another name (Python's surrogateescape str, as
# os.scandir gives it) the raw bytes, which SQLite keeps and compares as they are. Bound as
# bytes and cast, since Python's sqlite3 encodes a str strictly; read back with surrogateescape.
_NAME = "CAST(? AS TEXT)"


def _name(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _split_sql(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
