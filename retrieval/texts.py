"""A collection's texts: embedded once each, searched for an image (image-to-text)."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from index.catalog import TEXT
from index.collection import Collection, resolve_dir

from .collection_model import encoder_for
from .encoders.protocol import Encoder
from .errors import RetrievalError

TEXT_COLUMNS = ("text", "caption", "title", "label")


@dataclass(frozen=True)
class TextsReport:
    """What `add_texts` did: `added` new texts embedded, `known` already in the collection."""

    added: int
    known: int
    total: int


def read_texts(path: Path, column: str | None = None) -> list[str]:
    """Texts from a file: one per non-blank line, or one column of a .csv / .tsv file.

    column: the CSV column to read (default: the first of text, caption, title, label).
    """
    path = Path(path).expanduser()
    try:
        if path.suffix.lower() not in (".csv", ".tsv"):
            lines = path.read_text(encoding="utf-8").splitlines()
            return [line.strip() for line in lines if line.strip()]
        with path.open(newline="", encoding="utf-8") as f:
            rows = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            fields = {name.strip().lower(): name for name in rows.fieldnames or []}
            wanted = [column.lower()] if column else list(TEXT_COLUMNS)
            name = next((fields[c] for c in wanted if c in fields), None)
            if name is None:
                present = ", ".join(fields) or "none"
                raise RetrievalError(
                    f"{path}: no column {' or '.join(wanted)} (it has: {present}); "
                    "name one with --column"
                )
            return [row[name].strip() for row in rows if (row.get(name) or "").strip()]
    except FileNotFoundError as e:
        raise RetrievalError(f"{path}: no such file") from e
    except UnicodeDecodeError as e:
        raise RetrievalError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except (OSError, csv.Error) as e:
        raise RetrievalError(f"{path}: cannot read ({e})") from e


def add_texts(
    texts: Sequence[str],
    *,
    collection_dir: Path | None = None,
    encoder: Encoder | None = None,
    device: str = "auto",
    backend: str = "auto",
    batch_size: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> TextsReport:
    """Embed texts into the collection's text index; a text already there is not embedded again.

    Each batch commits on its own, so an interrupted call keeps what it finished.
    progress(done, total) is called after each batch.
    """
    unique = list(dict.fromkeys(t.strip() for t in texts if t.strip()))
    with Collection.open(resolve_dir(collection_dir)) as collection, collection.locked():
        known = collection.catalog.text_ids(unique)
        new = [t for t in unique if t not in known]
        if new and encoder is None:
            encoder = encoder_for(collection, device=device, backend=backend)
        for start in range(0, len(new), batch_size):
            batch = new[start : start + batch_size]
            collection.append_texts(encoder.encode_texts(batch), batch)  # type: ignore[union-attr]
            if progress:
                progress(start + len(batch), len(new))
        collection.sync_index(TEXT)
    return TextsReport(added=len(new), known=len(known), total=len(unique))
