"""Storage for collections: FAISS vectors, the SQLite catalog and the manifest.

Knows nothing of torch, PIL or models: numpy, faiss and sqlite3 only.
"""

from .catalog import Catalog, Item
from .collection import Collection, CollectionStats, default_dir, find_collection, resolve_dir
from .errors import (
    CollectionError,
    CollectionLocked,
    CollectionNotFound,
    CollectionTooNew,
    CorruptCollection,
    ModelMismatch,
)
from .manifest import Manifest, ModelIdentity

__all__ = [
    "Catalog",
    "Collection",
    "CollectionError",
    "CollectionLocked",
    "CollectionNotFound",
    "CollectionStats",
    "CollectionTooNew",
    "CorruptCollection",
    "Item",
    "Manifest",
    "ModelIdentity",
    "ModelMismatch",
    "default_dir",
    "find_collection",
    "resolve_dir",
]
