"""Errors raised by the encoders package. Messages are complete sentences meant for the user."""

from ..errors import RetrievalError


class ModelLoadError(RetrievalError):
    """A model's configuration or weights cannot be had."""
