"""Errors of the web app. Messages are complete sentences meant for the user."""

from ..errors import RetrievalError


class NotServable(RetrievalError):
    """An item that exists nowhere the app may serve from. `status` is the HTTP status."""

    def __init__(self, message: str, status: int = 404) -> None:
        super().__init__(message)
        self.status = status


class ServeError(RetrievalError):
    """The app cannot listen where it was asked to."""
