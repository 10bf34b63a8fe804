"""Errors of the evaluation package. Messages are complete sentences meant for the user."""

from ..errors import RetrievalError


class DatasetError(RetrievalError):
    """A dataset file is missing or malformed; the message names the file (and line)."""


def reason(error: Exception) -> str:
    """Why an OS or decoding call failed, without the file's name: "No such file or directory"."""
    return getattr(error, "strerror", None) or str(error)
