"""Errors of training. Messages are complete sentences meant for the user."""

from ..errors import RetrievalError


class TrainingError(RetrievalError):
    """A training run is asked for something it cannot do, or has nothing to resume from."""
