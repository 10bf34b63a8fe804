"""Errors raised by the storage layer. Messages are complete sentences meant for the user."""


class CollectionError(Exception):
    """Base class for every expected failure of a collection."""


class CollectionNotFound(CollectionError):
    """No collection exists where one was looked for."""


class CollectionLocked(CollectionError):
    """Another process holds the collection's write lock."""


class ModelMismatch(CollectionError):
    """A collection was asked to work with a model other than the one that built it."""


class CorruptCollection(CollectionError):
    """A file of the collection cannot be read or has an unexpected shape."""


class CollectionTooNew(CollectionError):
    """A file of the collection was written by a newer version of retrieval than this one."""


class StorageError(CollectionError):
    """A file of the collection cannot be written (a full disk, no permission); what was
    committed before is intact."""
