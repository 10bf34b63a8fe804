"""The web app: a page to search a collection by text or by example image, and its JSON API.

The model is loaded once, when the app is made, and shared by every request (see engine.py).
Every search reads the catalog's committed state, so it sees what a running `retrieval index`
has committed so far. The routes come in groups: searches, items, files.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.middleware.trustedhost import TrustedHostMiddleware

from index.collection import resolve_dir
from index.errors import CollectionError

from ..dates import taken_range
from ..encoders.protocol import Encoder
from ..errors import ImageReadError, QueryError, UnknownItem
from ..folders import folder_prefix
from ..info import collection_info
from ..names import printable
from ..search import Hit, ImageIndex, Searcher, TextHit, parse_text_query
from . import media
from .duplicates import add_duplicate_routes
from .engine import Engine
from .errors import NotServable
from .guards import ASGIApp, BodyLimit, SecurityHeaders

STATIC = Path(__file__).parent / "static"
THUMBNAILS = "thumbnails"
DEFAULT_MAX_UPLOAD = 20 * 1024 * 1024
MULTIPART_FRAMING = 64_000
"""Bytes a request body may hold beyond the file itself: the form's boundaries and fields."""
MAX_K = 500


K = Annotated[int, Query(ge=1, le=MAX_K, description="How many results.")]
Folder = Annotated[str, Query(description="Only images under this folder (relative to the root).")]
DATES = "2023, 2023-07, 2023-07-14 or 2023-07-14T18:30, in the server's local time"
After = Annotated[str, Query(max_length=40, description=f"Only images taken from: {DATES}.")]
Before = Annotated[str, Query(max_length=40, description=f"Only images taken up to: {DATES}.")]


def _item_id(item_id: int) -> int:
    """An item id from a path; one that no int64 can hold names no item (404, not a 500)."""
    if not -(2**63) <= item_id < 2**63:
        raise NotServable(f"no indexed image has id {item_id}")
    return item_id


ItemId = Annotated[int, Depends(_item_id)]


class GuardedApp(FastAPI):
    """FastAPI with the guards of guards.py around everything, its own error pages included."""

    body_limit = DEFAULT_MAX_UPLOAD + MULTIPART_FRAMING

    def build_middleware_stack(self) -> ASGIApp:
        message = _too_large("the upload", self.body_limit - MULTIPART_FRAMING)
        return SecurityHeaders(
            BodyLimit(super().build_middleware_stack(), self.body_limit, message)
        )


class HitOut(BaseModel):
    rank: int
    id: int
    score: float
    path: str


class TagOut(BaseModel):
    rank: int
    score: float
    text: str


class ItemOut(BaseModel):
    id: int
    path: str
    width: int | None
    height: int | None
    size: int


class FolderOut(BaseModel):
    folder: str
    images: int


def create_app(
    collection_dir: Path | None = None,
    *,
    backend: str = "auto",
    precision: str = "auto",
    device: str = "auto",
    encoder: Encoder | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
    allowed_hosts: list[str] | None = None,
    image_index: ImageIndex | None = None,
) -> FastAPI:
    """The app for the collection in collection_dir (or the nearest one above the current
    folder). Loads the model now, so a model that cannot be had fails before serving.

    allowed_hosts: the Host headers to answer (None: any). A server on loopback should name
    only loopback names, so that a web page whose domain is made to resolve to 127.0.0.1 (DNS
    rebinding) cannot read the collection through the visitor's browser. image_index: where
    image searches go instead of the collection's own index (the parts of a sharded index).
    """
    directory = resolve_dir(collection_dir)
    searcher = Searcher.open(
        directory, encoder=encoder, backend=backend, precision=precision, device=device,
        image_index=image_index,
    )  # fmt: skip
    engine = Engine(searcher)
    app = GuardedApp(
        title="retrieval",
        summary="Search a photo collection by text or by example image.",
        version="1",
        # FastAPI's /docs and /redoc pages load their scripts from a CDN; the app works offline.
        docs_url=None,
        redoc_url=None,
    )
    app.state.engine = engine
    app.body_limit = max_upload_bytes + MULTIPART_FRAMING
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    _errors(app)
    _search_routes(app, engine, max_upload_bytes)
    _item_routes(app, engine)
    _file_routes(app, engine)
    add_duplicate_routes(app, engine)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _search_routes(app: FastAPI, engine: Engine, max_upload_bytes: int) -> None:
    """The page, the collection's description, and searches by text or by uploaded image."""

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        """The collection's model, index and counts, and the backend answering queries."""
        data = collection_info(engine.directory).to_dict()
        data["query_backend"] = engine.encoder.backend
        data["query_precision"] = engine.encoder.precision
        return data

    @app.get("/api/search", response_model=list[HitOut])
    def search(
        response: Response,
        q: Annotated[str, Query(min_length=1, max_length=2000, description="The query.")],
        k: K = 24,
        folder: Folder = "",
        after: After = "",
        before: Before = "",
    ) -> list[HitOut]:
        """Images for a text query: `beach - people`, `sunset +2:sea` (weights, `-` subtracts)."""
        terms, prefix, taken = parse_text_query(q), folder_prefix(folder), _taken(after, before)
        with _timed(response, "encode"), engine.encoding() as searcher:
            vector = searcher.embed(terms)
        with _timed(response, "search"), engine.reading() as searcher:
            return _hits(searcher.search_vector(vector, k=k, prefix=prefix, **taken), searcher)

    @app.post("/api/search/image", response_model=list[HitOut])
    def search_image(
        response: Response,
        file: Annotated[UploadFile, File(description="An example image.")],
        k: Annotated[int, Form(ge=1, le=MAX_K)] = 24,
        folder: Annotated[str, Form()] = "",
        after: Annotated[str, Form(max_length=40)] = "",
        before: Annotated[str, Form(max_length=40)] = "",
    ) -> list[HitOut]:
        """Images like an uploaded one (folder, after and before filter as for /api/search)."""
        data = file.file.read(max_upload_bytes + 1)
        name = Path(file.filename or "upload").name
        if len(data) > max_upload_bytes:
            raise NotServable(_too_large(name, max_upload_bytes), status=413)
        if not data:
            raise QueryError(f"{name}: the upload is empty")
        prefix, taken = folder_prefix(folder), _taken(after, before)
        # Decoded before taking the encoder's turn: a large upload never holds up a text search.
        with _timed(response, "decode"), engine.decoding() as searcher:
            pixels = searcher.prepare_image(data, name=name)
        with _timed(response, "encode"), engine.encoding() as searcher:
            vector = searcher.encoder.encode_images(pixels[None])[0]
        with _timed(response, "search"), engine.reading() as searcher:
            return _hits(searcher.search_vector(vector, k=k, prefix=prefix, **taken), searcher)


def _item_routes(app: FastAPI, engine: Engine) -> None:
    """An indexed image's details, the images like it, and texts that describe it."""

    @app.get("/api/items/{item_id}", response_model=ItemOut)
    def item(item_id: ItemId) -> ItemOut:
        """An indexed image's path (relative to the root), size in bytes and pixel size."""
        with engine.reading() as searcher:
            found = searcher.collection.catalog.get(item_id)
        if found is None or found.status != "ok":
            raise NotServable(f"no indexed image has id {item_id}")
        return ItemOut(
            id=found.id,
            path=printable(found.path),
            width=found.width,
            height=found.height,
            size=found.size,
        )

    @app.get("/api/items/{item_id}/similar", response_model=list[HitOut])
    def similar(
        item_id: ItemId,
        response: Response,
        k: K = 24,
        folder: Folder = "",
        after: After = "",
        before: Before = "",
    ) -> list[HitOut]:
        """More like this: the images closest to an indexed one (itself left out)."""
        prefix, taken = folder_prefix(folder), _taken(after, before)
        with _timed(response, "search"), engine.reading() as searcher:
            return _hits(searcher.similar(item_id, k=k, prefix=prefix, **taken), searcher)

    @app.get("/api/items/{item_id}/describe", response_model=list[TagOut])
    def describe(item_id: ItemId, k: Annotated[int, Query(ge=1, le=50)] = 5) -> list[TagOut]:
        """Texts for an image: the collection's own texts, else ImageNet's classes (503 while
        those are being embedded, once per model)."""
        with engine.reading() as searcher:
            has_texts = searcher.collection.catalog.count_texts() > 0
        if not has_texts and not engine.tags_ready.is_set():
            raise NotServable(
                "tags are being prepared (ImageNet's 1,000 classes, once per model); "
                "try again in a minute",
                status=503,
            )
        if not has_texts and engine.tags_error:
            raise NotServable(engine.tags_error, status=503)
        with engine.encoding(), engine.reading() as searcher:
            tags: list[TextHit] = searcher.describe_vector(searcher.item_vector(item_id), k=k)
        return [TagOut(rank=t.rank, score=t.score, text=t.text) for t in tags]


def _file_routes(app: FastAPI, engine: Engine) -> None:
    """The image files themselves (as found, or re-encoded), their thumbnails, and the folders."""

    @app.get("/api/items/{item_id}/thumbnail", response_class=Response)
    def thumbnail(item_id: ItemId, request: Request) -> Response:
        """A JPEG thumbnail (at most 320 px a side, EXIF orientation applied), cached."""
        file = _served(engine, item_id)
        return _cached(request, file, lambda: (_thumbnail(engine, file), "image/jpeg"))

    @app.get("/api/items/{item_id}/image", response_class=Response)
    def image(item_id: ItemId, request: Request) -> Response:
        """The image itself (re-encoded as JPEG when a browser cannot show its format), sent as
        the type its bytes are, whatever its name says."""
        file = _served(engine, item_id)
        media_type = media.browser_type(file)
        if media_type is not None:
            return FileResponse(file.path, media_type=media_type, headers=_cache_headers(file))
        return _cached(
            request, file, lambda: (_decoded(file, lambda: media.as_jpeg(file)), "image/jpeg")
        )

    @app.get("/api/folders", response_model=list[FolderOut])
    def folders() -> list[FolderOut]:
        """The folders holding indexed images, for the folder filter."""
        return [FolderOut(folder=printable(f.folder), images=f.images) for f in engine.folders()]


def _errors(app: FastAPI) -> None:
    @app.exception_handler(QueryError)
    def bad_query(request: Request, error: QueryError) -> JSONResponse:
        status = 404 if isinstance(error, UnknownItem) else 400
        return JSONResponse({"detail": str(error)}, status_code=status)

    @app.exception_handler(NotServable)
    def not_servable(request: Request, error: NotServable) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=error.status)

    @app.exception_handler(CollectionError)
    def collection_error(request: Request, error: CollectionError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=503)


def _too_large(name: str, limit: int) -> str:
    return f"{name} is over the upload limit of {limit // (1024 * 1024)} MiB; send a smaller image"


def _taken(after: str, before: str) -> dict[str, str | None]:
    """A date filter from a request, checked now (a bad date is a 400 naming it), as the
    searcher's keyword arguments; an empty bound is none."""
    bounds = {"taken_after": after.strip() or None, "taken_before": before.strip() or None}
    taken_range(bounds["taken_after"], bounds["taken_before"], names=("after", "before"))
    return bounds


def _hits(hits: list[Hit], searcher: Searcher) -> list[HitOut]:
    root = searcher.collection.root
    return [
        HitOut(
            rank=h.rank,
            id=h.id,
            score=round(h.score, 6),
            path=printable(h.path.relative_to(root).as_posix()),
        )
        for h in hits
    ]


def _served(engine: Engine, item_id: int) -> media.ServedFile:
    with engine.reading() as searcher:
        collection = searcher.collection
        return media.resolve_item(collection.catalog, collection.root, item_id)


def _thumbnail(engine: Engine, file: media.ServedFile) -> bytes:
    return _decoded(file, lambda: media.thumbnail(file, engine.directory / THUMBNAILS))


def _decoded(file: media.ServedFile, make: Callable[[], Any]) -> Any:
    try:
        return make()
    except ImageReadError as e:
        raise media.unreadable(file, e) from e


def _cache_headers(file: media.ServedFile) -> dict[str, str]:
    # The id's file may change (re-indexed in place), so browsers revalidate by content hash.
    return {"ETag": f'"{file.etag}"', "Cache-Control": "no-cache"}


def _cached(
    request: Request, file: media.ServedFile, make: Callable[[], tuple[bytes, str]]
) -> Response:
    headers = _cache_headers(file)
    if request.headers.get("if-none-match") == headers["ETag"]:
        return Response(status_code=304, headers=headers)
    data, media_type = make()
    return Response(data, media_type=media_type, headers=headers)


@contextmanager
def _timed(response: Response, name: str) -> Iterator[None]:
    """Add the step's time to the Server-Timing header, which browsers' tools show."""
    start = time.perf_counter()
    yield
    ms = (time.perf_counter() - start) * 1000
    previous = response.headers.get("Server-Timing")
    entry = f"{name};dur={ms:.1f}"
    response.headers["Server-Timing"] = f"{previous}, {entry}" if previous else entry
