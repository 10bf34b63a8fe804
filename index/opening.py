"""Finding a collection directory, and reading what it is when it is opened: the manifest,
checked against the catalog's own record (or rebuilt from it when lost)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from . import provenance
from .catalog import Catalog
from .errors import CollectionError, CollectionNotFound, CorruptCollection, StorageError
from .layout import CATALOG, COLLECTION_DIRNAME, MANIFEST
from .manifest import Manifest
from .provenance import Provenance

REPAIR = "run `retrieval check --repair`"


def default_dir(root: Path) -> Path:
    """Where `retrieval index ROOT` keeps its collection unless told otherwise."""
    return Path(root).resolve() / COLLECTION_DIRNAME


def is_collection(directory: Path) -> bool:
    """Whether directory holds a collection: a manifest, or a catalog that records its model
    (its manifest lost)."""
    directory = Path(directory)
    if (directory / MANIFEST).is_file():
        return True
    if not (directory / CATALOG).is_file():
        return False
    with contextlib.suppress(CollectionError):
        catalog = Catalog(directory / CATALOG, readonly=True)
        try:
            return provenance.recorded(catalog) is not None
        finally:
            catalog.close()
    return False


def find_collection(start: Path | None = None) -> Path:
    """The nearest collection directory at or above `start` (default: the current directory)."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / COLLECTION_DIRNAME
        if is_collection(candidate):
            return candidate
    raise CollectionNotFound(
        f"no collection found in {here} or any folder above it; "
        "create one with `retrieval index PHOTO_FOLDER` or name one with --index DIR"
    )


def resolve_dir(collection_dir: Path | str | None) -> Path:
    """The collection a command names (`--index DIR`, `~` expanded), or the nearest one at or
    above the current directory when it names none."""
    return Path(collection_dir).expanduser() if collection_dir else find_collection()


def read_manifest(directory: Path, catalog: Catalog, *, verify: bool = True) -> Manifest:
    """The collection's manifest, agreeing with the catalog's record.

    A lost manifest is rebuilt from the record (in memory; the writer saves it). A manifest
    that disagrees with the record is refused (verify) or taken as the record says (for
    `check`, which reports it). A catalog made before records were kept gets one now.
    """
    path = directory / MANIFEST
    record = provenance.recorded(catalog)
    try:
        manifest = Manifest.read(path)
    except FileNotFoundError:
        if record is None:
            raise CollectionNotFound(
                f"{directory} is not a collection (no {MANIFEST}); "
                "create one with `retrieval index PHOTO_FOLDER --index DIR`"
            ) from None
        return provenance.rebuilt_manifest(record)
    except CorruptCollection:
        if verify or record is None:
            raise
        return provenance.rebuilt_manifest(record)
    if record is None:
        _record_once(catalog, provenance.of_manifest(manifest))
        return manifest
    problem = provenance.disagreement(manifest, record)
    if problem is not None:
        if verify:
            raise CorruptCollection(f"{path} {problem}; {REPAIR} to rewrite it from the catalog")
        manifest.model, manifest.dim = record.model, record.dim
        manifest.embedding_dtype = record.embedding_dtype
    return manifest


def _record_once(catalog: Catalog, record: Provenance) -> None:
    """Give an older catalog its record, through a writing connection if this one only reads.
    A collection that cannot be written (a read-only disk) goes on without one."""
    with contextlib.suppress(CollectionError):
        writer = Catalog(catalog.path)
        try:
            provenance.record(writer, record)
        finally:
            writer.close()


def check_dir(directory: Path) -> None:
    """Say in one line why directory cannot hold a collection (a file, or a place that cannot
    be written), without making anything."""
    if directory.exists() and not directory.is_dir():
        raise CollectionError(f"{directory} is a file, not a folder; name a folder with --index")
    existing = next(p for p in (directory, *directory.parents) if p.exists())
    if not existing.is_dir():
        raise CollectionError(f"{existing} is a file, not a folder; name a folder with --index")
    if not os.access(existing, os.W_OK):
        raise StorageError(
            f"cannot make a collection in {directory} ({existing} cannot be written); name a "
            "writable folder with --index"
        )


def make_dir(directory: Path) -> None:
    """Make the collection's folder, or say in one line why it cannot be one."""
    check_dir(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(
            f"cannot make a collection in {directory} ({e.strerror or e}); name a writable "
            "folder with --index"
        ) from e


def stored_root(root: Path, directory: Path) -> str:
    """Store the root relative to the collection when the collection lives inside it."""
    try:
        return os.path.relpath(root, directory) if directory.is_relative_to(root) else str(root)
    except ValueError:
        return str(root)
