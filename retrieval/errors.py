"""Errors raised by the library. Messages are complete sentences meant for the user."""


class RetrievalError(Exception):
    """Base class for every expected failure of the library."""


class ImageReadError(RetrievalError):
    """A file cannot be decoded as an image. `reason` is the why, without the file's name."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


class QueryError(RetrievalError):
    """A search query is malformed or names something that does not exist."""


class UnknownItem(QueryError):
    """A query names an item id that the collection does not hold."""
