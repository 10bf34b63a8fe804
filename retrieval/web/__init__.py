"""The web app behind `retrieval serve`: a page and a JSON API over one collection."""

from .app import create_app
from .server import Listening, serve

__all__ = ["Listening", "create_app", "serve"]
