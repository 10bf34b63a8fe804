"""The catalog's schema, as the migrations that build it."""

from __future__ import annotations

# Each entry migrates the schema from version i to i + 1; never edit one that has shipped.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE items (
        id       INTEGER PRIMARY KEY AUTOINCREMENT,
        path     TEXT    NOT NULL UNIQUE,
        size     INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        hash     TEXT,
        width    INTEGER,
        height   INTEGER,
        status   TEXT    NOT NULL,
        error    TEXT,
        row      INTEGER
    );
    CREATE INDEX items_hash ON items(hash);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    INSERT INTO meta VALUES ('version', '0'), ('next_row', '0');
    """,
    """
    CREATE TABLE texts (
        id   INTEGER PRIMARY KEY AUTOINCREMENT,
        text TEXT    NOT NULL UNIQUE,
        row  INTEGER NOT NULL
    );
    INSERT INTO meta VALUES ('text_version', '0'), ('text_next_row', '0');
    """,
    # When each photo was taken, and with which camera (see capture.py).
    """
    ALTER TABLE items ADD COLUMN taken INTEGER;
    ALTER TABLE items ADD COLUMN taken_offset INTEGER;
    ALTER TABLE items ADD COLUMN taken_source TEXT;
    ALTER TABLE items ADD COLUMN camera TEXT;
    CREATE INDEX items_taken ON items(taken);
    """,
    # What was skipped is tried again when its ctime or mode change; compaction names the
    # embeddings file in use.
    """
    ALTER TABLE items ADD COLUMN ctime_ns INTEGER;
    ALTER TABLE items ADD COLUMN mode INTEGER;
    INSERT OR IGNORE INTO meta VALUES ('embeddings_file', 'embeddings.bin'),
        ('text_embeddings_file', 'text_embeddings.bin');
    """,
)
