"""Running the web app: bind the address first (so a busy port is a clear error), then uvicorn."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import ServeError


@dataclass(frozen=True)
class Listening:
    """Where the app answers. loopback: only this machine can reach it."""

    url: str
    loopback: bool


LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]
"""The Host headers a server on loopback answers (with any port)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    collection_dir: Path | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    on_listening: Callable[[Listening], None] | None = None,
    **app_options: object,
) -> None:
    """Serve the collection's web app until interrupted. The model is loaded before the
    address is announced; port 0 takes a free port. app_options go to create_app."""
    import uvicorn

    from .app import create_app

    hosts = LOOPBACK_NAMES if is_loopback(host) else None
    app = create_app(collection_dir, allowed_hosts=hosts, **app_options)  # type: ignore[arg-type]
    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    if on_listening is not None:
        on_listening(Listening(f"http://{shown}:{bound_port}/", is_loopback(host)))
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
    # Ctrl-C is how a server is meant to stop: uvicorn has shut down when it re-raises it.
    try:
        with sock, contextlib.suppress(KeyboardInterrupt):
            uvicorn.Server(config).run(sockets=[sock])
    finally:
        app.state.engine.close()


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ServeError(f"--host {host}: not an address of this machine ({e.strerror})") from e
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise ServeError(
            f"cannot listen on {host}:{port} ({e.strerror}); choose another --port"
        ) from e
    sock.set_inheritable(True)
    return sock
