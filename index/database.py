"""The catalog's SQLite connection, whose failures arrive as the collection's typed errors.

Every statement's rows are fetched at once, so a damaged page met half way through a result
is reported like any other failure: one sentence naming the file and what to do.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import CollectionError, CollectionLocked, CorruptCollection, StorageError


class Rows:
    """The rows a statement gave, and the id of the row it inserted."""

    def __init__(self, rows: list[tuple], lastrowid: int | None) -> None:
        self.rows = rows
        self.lastrowid = lastrowid

    def fetchone(self) -> tuple | None:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[tuple]:
        return self.rows

    def __iter__(self) -> Iterator[tuple]:
        return iter(self.rows)


class Database:
    """A sqlite3 connection to the catalog at `path`."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self.connection = connection
        self.path = path

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Rows:
        try:
            cursor = self.connection.execute(sql, parameters)
            return Rows(cursor.fetchall(), cursor.lastrowid)
        except sqlite3.DatabaseError as e:
            raise storage_error(self.path, e) from e

    def executemany(self, sql: str, parameters: list[Sequence[Any]]) -> None:
        try:
            self.connection.executemany(sql, parameters)
        except sqlite3.DatabaseError as e:
            raise storage_error(self.path, e) from e

    @property
    def in_transaction(self) -> bool:
        return self.connection.in_transaction

    def close(self) -> None:
        self.connection.close()


def storage_error(path: Path, error: sqlite3.DatabaseError) -> CollectionError:
    """The collection's error for a failure of SQLite on the catalog at path."""
    text = str(error)
    if "full" in text:
        return StorageError(
            f"cannot write {path}: the disk is full; free some space and run the command "
            "again (nothing committed was lost)"
        )
    if "locked" in text or "busy" in text:
        return CollectionLocked(f"{path} is busy in another process ({text}); try again")
    if "readonly" in text or "unable to open" in text or "disk I/O" in text:
        return StorageError(
            f"cannot use {path} ({text}); make its folder readable and writable, or name "
            "another --index"
        )
    return CorruptCollection(
        f"{path} is damaged ({text}); it cannot be mended in place: restore it from a backup, "
        "or index the folder again into a new --index"
    )
