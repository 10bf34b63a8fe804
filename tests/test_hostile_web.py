"""Hostile requests to the web app: bodies streamed past the cap, ids no int64 holds, files
whose names lie about their format, uploads that take long to decode; and what every response
carries."""

from __future__ import annotations

import asyncio
import io
import os
import re
import threading
from pathlib import Path

import pytest
from conftest import photo, write_photos
from PIL import Image

pytest.importorskip("fastapi")
import httpx
from fastapi.testclient import TestClient

import retrieval.images
from index.collection import default_dir
from retrieval.indexer import index_folder
from retrieval.web import create_app
from retrieval.web.app import STATIC

CAP = 200_000
NOT_UTF8_FOLDER = os.fsdecode(b"caf\xe9")


def encoded(image: Image.Image, format: str) -> bytes:
    out = io.BytesIO()
    image.save(out, format=format)
    return out.getvalue()


@pytest.fixture(scope="module")
def root(tmp_path_factory, encoder) -> Path:
    folder = tmp_path_factory.mktemp("web") / "photos"
    write_photos(folder, ["plain.jpg"])
    (folder / "png.jpg").write_bytes(encoded(photo(1), "PNG"))
    (folder / "jpeg.png").write_bytes(encoded(photo(2), "JPEG"))
    (folder / "tiff.png").write_bytes(encoded(photo(3), "TIFF"))
    (folder / NOT_UTF8_FOLDER).mkdir()
    photo(4).save(folder / NOT_UTF8_FOLDER / os.fsdecode(b"\xff.jpg"))
    (folder / os.fsdecode(b"bad\xfe.jpg")).write_text("not an image")
    index_folder(folder, model=encoder.identity, encoder=encoder)
    return folder


@pytest.fixture(scope="module")
def app(root, encoder):
    return create_app(default_dir(root), encoder=encoder, max_upload_bytes=CAP)


@pytest.fixture(scope="module")
def client(app) -> TestClient:
    return TestClient(app)


def ids(client: TestClient) -> dict[str, int]:
    hits = client.get("/api/search", params={"q": "anything", "k": 50}).json()
    return {h["path"]: h["id"] for h in hits}


def test_a_chunked_upload_is_refused_at_the_cap_without_reading_the_rest(app):
    boundary = "hostile"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="huge.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    chunk, chunks = b"\0" * 65536, 3200  # 200 MiB, a thousand times the cap
    sent = 0

    async def body():
        nonlocal sent
        yield head
        for _ in range(chunks):
            sent += 1
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.post(
                "/api/search/image",
                content=body(),
                headers={"content-type": f"multipart/form-data; boundary={boundary}"},
            )

    response = asyncio.run(post())
    assert response.status_code == 413
    assert "upload limit" in response.json()["detail"]
    assert "content-length" not in response.request.headers  # it was really sent chunked
    assert sent < chunks
    assert sent * len(chunk) <= CAP + len(chunk) * 2  # read up to the cap, and no further


def test_ids_no_int64_holds_are_404_not_500(client):
    for huge in ["99999999999999999999", "-99999999999999999999", str(2**63)]:
        for route in ["", "/image", "/thumbnail", "/similar", "/describe"]:
            response = client.get(f"/api/items/{huge}{route}")
            assert response.status_code == 404, (route, response.text)
            assert "no indexed image" in response.json()["detail"]


def test_every_response_says_nosniff(client):
    item = ids(client)["plain.jpg"]
    responses = [
        client.get("/"),
        client.get("/static/app.js"),
        client.get("/api/info"),
        client.get("/api/search", params={"q": "x"}),
        client.get("/api/search", params={"q": "x", "k": 0}),  # 422
        client.get(f"/api/items/{item}/image"),
        client.get(f"/api/items/{item}/thumbnail"),
        client.get("/api/items/123456/image"),  # 404
        client.get("/no/such/page"),
        client.post("/api/search/image", content=b"x" * (CAP + 100_000)),  # 413
    ]
    for response in responses:
        assert response.headers.get("x-content-type-options") == "nosniff", response.url


def test_the_media_type_comes_from_the_bytes_not_the_name(client):
    found = ids(client)
    for name, media_type, format in [
        ("png.jpg", "image/png", "PNG"),
        ("jpeg.png", "image/jpeg", "JPEG"),
        ("plain.jpg", "image/jpeg", "JPEG"),
        ("tiff.png", "image/jpeg", "JPEG"),  # no browser shows TIFF: re-encoded
    ]:
        response = client.get(f"/api/items/{found[name]}/image")
        assert response.status_code == 200
        assert response.headers["content-type"] == media_type, name
        assert Image.open(io.BytesIO(response.content)).format == format, name


def test_names_that_are_not_utf8_are_served_escaped(client):
    shown = "caf\\xe9/\\xff.jpg"
    item_id = ids(client)[shown]
    item = client.get(f"/api/items/{item_id}")
    assert item.status_code == 200 and item.json()["path"] == shown
    assert client.get(f"/api/items/{item_id}/image").status_code == 200
    folders = client.get("/api/folders")
    assert folders.status_code == 200
    assert [f["folder"] for f in folders.json()] == ["caf\\xe9"]
    info = client.get("/api/info").json()
    assert [s["path"] for s in info["skipped"]] == ["bad\\xfe.jpg"]


def test_an_upload_is_decoded_before_it_takes_the_encoders_turn(client, monkeypatch):
    decoding, release = threading.Event(), threading.Event()
    load_image = retrieval.images.load_image

    def slow_load_image(source, **kwargs):
        if isinstance(source, bytes):  # the upload: hold it in decoding until released
            decoding.set()
            assert release.wait(120)
        return load_image(source, **kwargs)

    monkeypatch.setattr(retrieval.images, "load_image", slow_load_image)
    uploaded: list[httpx.Response] = []
    upload = threading.Thread(
        target=lambda: uploaded.append(
            client.post("/api/search/image", files={"file": ("p.png", encoded(photo(1), "PNG"))})
        )
    )
    upload.start()
    searched = threading.Event()
    try:
        assert decoding.wait(120)
        # While the upload is decoding, a text search gets the encoder: it does not wait.
        search = threading.Thread(
            target=lambda: client.get("/api/search", params={"q": "x"}) and searched.set()
        )
        search.start()
        assert searched.wait(60), "a text search waited for an upload to be decoded"
    finally:
        release.set()
        upload.join()
    assert uploaded[0].status_code == 200


def test_the_page_encodes_every_value_it_puts_into_a_url():
    script = (STATIC / "app.js").read_text()
    urls = [u for u in re.findall(r"`([^`]*)`", script) if "/api/" in u or u.startswith("?")]
    assert urls
    safe = re.compile(r"^(encodeURIComponent|query|itemUrl)\(|^(what|search|params)$")
    for url in urls:
        for value in re.findall(r"\$\{([^}]*)\}", url):
            assert safe.match(value), f"{value!r} goes into {url!r} unencoded"
    assert "itemUrl(value" in script  # ?similar= from the address bar goes through it
