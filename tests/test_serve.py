"""The web app's JSON API, through FastAPI's test client, against brute force and by hand."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import photo, write_photos
from PIL import Image
from reference import brute_force, stored_vectors

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from index.collection import default_dir
from retrieval.indexer import index_folder
from retrieval.texts import add_texts
from retrieval.web import create_app
from retrieval.web.app import THUMBNAILS

NAMES = [f"{folder}/img{i:02d}.jpg" for folder in ("trips", "trips/may", "home") for i in range(5)]


@pytest.fixture
def root(tmp_path: Path, encoder) -> Path:
    folder = tmp_path / "photos"
    write_photos(folder, NAMES)
    photo(90, (120, 60)).save(folder / "home" / "scan.tif")
    index_folder(folder, model=encoder.identity, encoder=encoder, batch_size=8)
    return folder


@pytest.fixture
def client(root: Path, encoder) -> TestClient:
    return TestClient(create_app(default_dir(root), encoder=encoder, max_upload_bytes=200_000))


def ids_by_path(client: TestClient) -> dict[str, int]:
    hits = client.get("/api/search", params={"q": "anything", "k": 500}).json()
    return {h["path"]: h["id"] for h in hits}


def assert_hits_match(hits: list[dict], scores: dict[str, float], k: int) -> None:
    """The scores brute force gives, best first, up to ties."""
    assert len(hits) == min(k, len(scores))
    for hit in hits:
        assert hit["score"] == pytest.approx(scores[hit["path"]], abs=1e-5)
    got = [h["score"] for h in hits]
    assert np.allclose(got, sorted(scores.values(), reverse=True)[:k], atol=1e-5)
    assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1))


def test_text_search_equals_brute_force(client, root, encoder):
    for text in ["a red square", "ünïcödé 🐈"]:
        response = client.get("/api/search", params={"q": text, "k": 7})
        assert response.status_code == 200
        assert "encode;dur=" in response.headers["server-timing"]
        assert_hits_match(response.json(), brute_force(root, encoder.encode_texts([text])[0]), 7)


def test_query_syntax_weighs_and_subtracts_terms_like_the_vectors(client, root, encoder):
    a, b = encoder.encode_texts(["a red square", "a blue circle"])
    query = 2 * a - b
    query /= np.linalg.norm(query)
    hits = client.get("/api/search", params={"q": "2:a red square - a blue circle"}).json()
    assert_hits_match(hits, brute_force(root, query), 24)


def test_folder_filter_keeps_results_inside_the_folder(client, root, encoder):
    hits = client.get("/api/search", params={"q": "sky", "folder": "trips", "k": 50}).json()
    inside = {p for p in (n for n in NAMES) if p.startswith("trips/")}
    assert_hits_match(hits, brute_force(root, encoder.encode_texts(["sky"])[0], inside), 50)
    assert client.get("/api/search", params={"q": "sky", "folder": "nowhere"}).json() == []


@pytest.mark.parametrize("folder", ["..", "../photos", "trips/../../x", "/etc", "..\\x"])
def test_folder_filter_outside_the_collection_is_refused(client, folder):
    response = client.get("/api/search", params={"q": "sky", "folder": folder})
    assert response.status_code == 400
    assert "inside the collection" in response.json()["detail"]


def test_bad_queries_get_a_clear_400(client):
    assert client.get("/api/search", params={"q": "- people"}).status_code == 400
    assert "nothing to search for" in client.get("/api/search?q=-x").json()["detail"]
    assert client.get("/api/search", params={"q": "x", "k": 0}).status_code == 422


def test_folders_lists_every_folder_with_its_images(client):
    folders = {f["folder"]: f["images"] for f in client.get("/api/folders").json()}
    assert folders == {"trips": 10, "trips/may": 5, "home": 6}


def test_uploaded_photo_finds_itself_first(client, root):
    data = (root / "trips/img03.jpg").read_bytes()
    response = client.post("/api/search/image", files={"file": ("x.jpg", data)}, data={"k": 3})
    assert response.status_code == 200
    hits = response.json()
    assert hits[0]["path"] == "trips/img03.jpg"
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-3)


def test_similar_ranks_like_brute_force_without_the_item_itself(client, root):
    ids = ids_by_path(client)
    hits = client.get(f"/api/items/{ids['home/img01.jpg']}/similar", params={"k": 5}).json()
    scores = brute_force(root, stored_vectors(root)["home/img01.jpg"])
    del scores["home/img01.jpg"]
    assert_hits_match(hits, scores, 5)


def test_describe_gives_the_collections_closest_texts(client, root, encoder):
    texts = ["a red square", "a blue circle", "a green field", "night sky"]
    add_texts(texts, collection_dir=default_dir(root), encoder=encoder)
    ids = ids_by_path(client)
    tags = client.get(f"/api/items/{ids['trips/img02.jpg']}/describe", params={"k": 2}).json()
    vector = stored_vectors(root)["trips/img02.jpg"]
    expected = sorted(texts, key=lambda t: -float(encoder.encode_texts([t])[0] @ vector))[:2]
    assert [t["text"] for t in tags] == expected


def test_item_gives_its_path_and_size(client, root):
    ids = ids_by_path(client)
    item = client.get(f"/api/items/{ids['home/scan.tif']}").json()
    assert item["path"] == "home/scan.tif"
    assert (item["width"], item["height"]) == (120, 60)
    assert item["size"] == (root / "home/scan.tif").stat().st_size


def test_full_image_is_the_file_itself_or_a_jpeg_for_other_formats(client, root):
    ids = ids_by_path(client)
    jpeg = client.get(f"/api/items/{ids['trips/img00.jpg']}/image")
    assert jpeg.status_code == 200
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert jpeg.content == (root / "trips/img00.jpg").read_bytes()
    tiff = client.get(f"/api/items/{ids['home/scan.tif']}/image")
    assert tiff.headers["content-type"] == "image/jpeg"
    shown = np.asarray(Image.open(io.BytesIO(tiff.content)).convert("RGB"), dtype=np.int16)
    original = np.asarray(Image.open(root / "home/scan.tif").convert("RGB"), dtype=np.int16)
    assert shown.shape == original.shape
    assert np.abs(shown - original).mean() < 8


def test_thumbnail_is_upright_small_and_made_once(client, root, encoder):
    upright = photo(77, (200, 120))
    (root / "rotated.jpg").write_bytes(_exif_rotated_jpeg(upright))
    index_folder(root, encoder=encoder)
    item_id = ids_by_path(client)["rotated.jpg"]
    response = client.get(f"/api/items/{item_id}/thumbnail")
    assert response.status_code == 200
    thumb = Image.open(io.BytesIO(response.content)).convert("RGB")
    assert thumb.size == (200, 120)  # the EXIF rotation undone, and not enlarged
    by_hand = np.asarray(upright, dtype=np.int16)
    assert np.abs(np.asarray(thumb, dtype=np.int16) - by_hand).mean() < 10
    cached = list((default_dir(root) / THUMBNAILS).rglob("*.jpg"))
    assert len(cached) == 1
    cached[0].write_bytes(response.content + b"")  # same bytes, new mtime
    mtime = cached[0].stat().st_mtime_ns
    again = client.get(f"/api/items/{item_id}/thumbnail")
    assert again.content == response.content
    assert cached[0].stat().st_mtime_ns == mtime
    etag = again.headers["etag"]
    revalidated = client.get(f"/api/items/{item_id}/thumbnail", headers={"If-None-Match": etag})
    assert revalidated.status_code == 304


def _exif_rotated_jpeg(upright: Image.Image) -> bytes:
    """The picture stored turned 90 degrees, with EXIF orientation 6 (rotate 90 CW to show)."""
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    stored.save(out, format="JPEG", quality=95, exif=exif)
    return out.getvalue()


@pytest.mark.parametrize(
    "url",
    [
        "/api/items/999999/image",
        "/api/items/999999/thumbnail",
        "/api/items/999999/similar",
        "/api/items/-1/image",
        "/api/items/..%2F..%2Fetc%2Fpasswd/image",
        "/api/items/%2Fetc%2Fpasswd/thumbnail",
        "/api/items/1%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/api/items/../../../../etc/passwd",
        "/static/../../../../etc/passwd",
        "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/api/items/1/image/../../../etc/passwd",
    ],
)
def test_unknown_and_path_like_ids_reach_no_file(client, url):
    response = client.get(url)
    assert response.status_code in (404, 422), (url, response.status_code)
    assert b"root:" not in response.content


def test_a_symlink_out_of_the_root_is_not_served(tmp_path, root, client, encoder):
    secret = tmp_path / "outside" / "secret.jpg"
    secret.parent.mkdir()
    photo(5).save(secret)
    (root / "link.jpg").symlink_to(secret)
    index_folder(root, encoder=encoder)
    item_id = ids_by_path(client)["link.jpg"]  # indexed (scanning follows links) ...
    for what in ("image", "thumbnail"):  # ... but never served
        response = client.get(f"/api/items/{item_id}/{what}")
        assert response.status_code == 403
        assert "outside the indexed folder" in response.json()["detail"]


def test_an_oversized_upload_is_refused_with_413(client):
    big = b"\xff\xd8" + os.urandom(300_000)
    response = client.post("/api/search/image", files={"file": ("huge.jpg", big)})
    assert response.status_code == 413
    assert "upload limit" in response.json()["detail"]


def test_a_malformed_upload_is_a_400_naming_the_file(client):
    response = client.post("/api/search/image", files={"file": ("notes.jpg", b"not a picture")})
    assert response.status_code == 400
    assert response.json()["detail"].startswith("notes.jpg: not an image")
    empty = client.post("/api/search/image", files={"file": ("empty.png", b"")})
    assert empty.status_code == 400
    assert "empty" in empty.json()["detail"]


def test_a_decompression_bomb_upload_is_refused_before_decoding(client):
    response = client.post("/api/search/image", files={"file": ("bomb.png", _png_claiming(20_000))})
    assert response.status_code == 400
    assert "decompression-bomb cap" in response.json()["detail"]


def _png_claiming(side: int) -> bytes:
    """A tiny PNG whose header says side x side pixels (400 megapixels for 20,000)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def test_searches_see_what_an_index_run_adds_while_serving(client, root, encoder):
    before = ids_by_path(client)
    write_photos(root, ["late/new.jpg"], first_seed=500)
    index_folder(root, encoder=encoder)
    after = ids_by_path(client)
    assert set(after) == set(before) | {"late/new.jpg"}
    data = (root / "late/new.jpg").read_bytes()
    hits = client.post("/api/search/image", files={"file": ("q.jpg", data)}).json()
    assert hits[0]["path"] == "late/new.jpg"
    assert {"folder": "late", "images": 1} in client.get("/api/folders").json()


def test_info_describes_the_collection_and_the_query_backend(client, encoder):
    info = client.get("/api/info").json()
    assert info["images"] == len(NAMES) + 1
    assert info["model"] == encoder.identity.name
    assert info["query_backend"] == "torch"


def test_the_api_is_documented_by_openapi(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 404  # its page would load scripts from a CDN
    for path in [
        "/api/search",
        "/api/search/image",
        "/api/items/{item_id}/similar",
        "/api/items/{item_id}/thumbnail",
        "/api/items/{item_id}/image",
        "/api/info",
    ]:
        assert path in paths


def test_the_page_loads_nothing_from_other_hosts(client):
    page = client.get("/")
    assert page.status_code == 200
    for asset in ["/", "/static/app.js", "/static/app.css"]:
        text = client.get(asset).text
        assert client.get(asset).status_code == 200
        assert not re.search(r"(src|href)=[\"']?(https?:)?//", text), asset
        assert "url(http" not in text and "import(" not in text, asset


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(root: Path, *options: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "cli", "serve", "--index", str(default_dir(root))]
    return subprocess.Popen(
        [*command, "--backend", "torch", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[1],
        env={**os.environ, **(env or {})},
    )


def test_serve_prints_its_address_answers_and_stops_on_ctrl_c(root, tmp_path):
    import httpx

    # A cache of its own: the tag vocabulary is still being embedded when Ctrl-C comes.
    server = _serve(root, "--port", "0", env={"RETRIEVAL_CACHE": str(tmp_path / "cache")})
    try:
        url = server.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url), url
        assert httpx.get(url + "api/info", timeout=30).json()["images"] == len(NAMES) + 1
    finally:
        server.send_signal(signal.SIGINT)
        _, stderr = server.communicate(timeout=30)
    assert server.returncode == 0, stderr
    assert "Traceback" not in stderr


def test_serve_warns_when_reachable_from_other_machines_and_refuses_a_busy_port(root):
    server = _serve(root, "--host", "0.0.0.0", "--port", "0")
    try:
        assert server.stdout.readline().startswith("http://0.0.0.0:")
    finally:
        server.send_signal(signal.SIGINT)
        _, stderr = server.communicate(timeout=30)
    assert "warning: listening on 0.0.0.0" in stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        refused = _serve(root, "--port", str(port))
        _, stderr = refused.communicate(timeout=60)
    assert refused.returncode == 1
    assert stderr.strip().splitlines()[-1].startswith(f"error: cannot listen on 127.0.0.1:{port}")
    assert "Traceback" not in stderr


def test_the_model_is_loaded_once_for_all_requests(root, tiny_model, monkeypatch):
    import retrieval.collection_model

    loads = []
    real = retrieval.collection_model.load_encoder

    def counting(*args, **kwargs):
        loads.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(retrieval.collection_model, "load_encoder", counting)
    client = TestClient(create_app(default_dir(root), backend="torch", device="cpu"))
    assert len(loads) == 1  # loaded when the app is made, before the first request
    for text in ["one", "two", "three"]:
        assert client.get("/api/search", params={"q": text}).status_code == 200
    data = (root / "trips/img01.jpg").read_bytes()
    assert client.post("/api/search/image", files={"file": ("q.jpg", data)}).status_code == 200
    assert len(loads) == 1


def test_concurrent_searches_during_an_index_run_all_succeed(client, root, encoder):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    write_photos(root, [f"batch/new{i:02d}.jpg" for i in range(24)], first_seed=300)
    indexer = threading.Thread(
        target=index_folder, args=(root,), kwargs={"encoder": encoder, "batch_size": 4}
    )
    indexer.start()
    with ThreadPoolExecutor(8) as pool:
        statuses = []
        while indexer.is_alive():
            futures = [
                pool.submit(client.get, "/api/search", params={"q": f"q{i}"}) for i in range(8)
            ]
            statuses += [f.result().status_code for f in futures]
    indexer.join()
    assert statuses and set(statuses) == {200}
    assert len(ids_by_path(client)) == len(NAMES) + 1 + 24


def test_a_loopback_server_refuses_other_host_names(root, encoder):
    from retrieval.web.server import LOOPBACK_NAMES

    app = create_app(default_dir(root), encoder=encoder, allowed_hosts=LOOPBACK_NAMES)
    for base in ["http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000"]:
        assert TestClient(app, base_url=base).get("/api/info").status_code == 200, base
    # A page on another domain that resolves to 127.0.0.1 (DNS rebinding) gets nothing.
    rebound = TestClient(app, base_url="http://attacker.example:8000")
    assert rebound.get("/api/info").status_code == 400
    item_id = ids_by_path(TestClient(app, base_url=base))["home/img00.jpg"]
    assert rebound.get(f"/api/items/{item_id}/image").status_code == 400


def test_tags_answer_503_until_the_vocabulary_is_ready_and_searches_go_on(
    root, encoder, monkeypatch
):
    import threading

    import retrieval.web.engine

    release = threading.Event()
    real = retrieval.web.engine.vocabulary

    def slow_vocabulary(turn_taking_encoder):
        turn_taking_encoder.encode_texts([f"prompt {i}" for i in range(100)])  # takes turns
        assert release.wait(60)
        return real(turn_taking_encoder)

    monkeypatch.setattr(retrieval.web.engine, "vocabulary", slow_vocabulary)
    client = TestClient(create_app(default_dir(root), encoder=encoder))
    item_id = ids_by_path(client)["home/img02.jpg"]  # a search while the vocabulary is embedded
    waiting = client.get(f"/api/items/{item_id}/describe")
    assert waiting.status_code == 503
    assert "tags are being prepared" in waiting.json()["detail"]
    release.set()
    assert client.app.state.engine.tags_ready.wait(60)
    tags = client.get(f"/api/items/{item_id}/describe", params={"k": 3})
    assert tags.status_code == 200
    names, vectors = real(encoder)
    scores = vectors @ stored_vectors(root)["home/img02.jpg"]
    assert [t["text"] for t in tags.json()] == [names[i] for i in np.argsort(-scores)[:3]]
