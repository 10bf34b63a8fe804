"""The search page in a real headless Chromium: type, see thumbnails, upload, click through.

Needs Debian's `chromium` (`.ci/run` installs it). Without it the tests skip, unless
RETRIEVAL_REQUIRE_BROWSER is set (as CI sets it), when they fail instead.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import write_photos

from index.collection import default_dir
from retrieval.indexer import index_folder

playwright_api = pytest.importorskip("playwright.sync_api")
uvicorn = pytest.importorskip("uvicorn")

from retrieval.web import create_app  # noqa: E402
from retrieval.web.server import _bind  # noqa: E402

CHROMIUM = (
    os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
)
ARTIFACTS = Path(
    os.environ.get("RETRIEVAL_TEST_ARTIFACTS", Path(__file__).parents[1] / "test-artifacts")
)
NAMES = [f"{folder}/img{i:02d}.jpg" for folder in ("trips", "home") for i in range(30)]
SHOWN = 48  # results a search asks for first (app.js's K)

if CHROMIUM is None:
    if os.environ.get("RETRIEVAL_REQUIRE_BROWSER"):
        raise RuntimeError("no chromium on PATH: install Debian's chromium package")
    pytest.skip("no chromium on PATH (install Debian's chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, encoder) -> Iterator[tuple[str, Path]]:
    """The app over a small collection, served by uvicorn on a free loopback port."""
    root = tmp_path_factory.mktemp("browser") / "photos"
    write_photos(root, NAMES)
    index_folder(root, model=encoder.identity, encoder=encoder, batch_size=8)
    app = create_app(default_dir(root), encoder=encoder)
    assert app.state.engine.tags_ready.wait(120)  # else the viewer's first tags would be a 503
    sock = _bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/", root
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser, site):
    context = browser.new_context(viewport={"width": 1000, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.failed = []  # responses with an error status: a test expecting one takes it out
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if _unexpected(m) else None)
    page.on("response", lambda r: page.failed.append(r.url) if r.status >= 400 else None)
    page.goto(site[0])
    yield page
    context.close()
    assert errors == [], errors
    assert page.failed == [], page.failed


def _unexpected(message) -> bool:
    # Chromium logs every error status as well; those are checked through page.failed.
    return message.type == "error" and not message.text.startswith("Failed to load resource")


def thumbnails_loaded(page) -> int:
    """How many result thumbnails the browser has decoded (not merely requested)."""
    return page.evaluate(
        "() => [...document.querySelectorAll('#results img')]"
        ".filter(i => i.complete && i.naturalWidth > 0).length"
    )


def test_typing_a_query_shows_thumbnails_and_saves_a_screenshot(page):
    page.fill("#q", "a red square")
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.querySelectorAll('#results img').length > 0")
    tiles = page.locator("#results li")
    assert tiles.count() == SHOWN
    page.wait_for_function(  # lazy thumbnails: those on screen, at least
        "() => [...document.querySelectorAll('#results img')]"
        ".filter(i => i.complete && i.naturalWidth > 0).length >= 10"
    )
    assert "a+red+square" in page.url  # the query is in the address, so Back and links work
    assert page.locator("#status").inner_text().startswith(f"{SHOWN} images for")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / "serve-results.png")  # the screen, thumbnails loaded
    assert (ARTIFACTS / "serve-results.png").stat().st_size > 10_000


def test_uploading_a_photo_finds_it_first(page, site):
    page.set_input_files("#file", str(site[1] / "home/img03.jpg"))
    page.wait_for_function("() => document.querySelectorAll('#results li').length > 0")
    first = page.locator("#results li .path").first.inner_text()
    assert first == "home/img03.jpg"


def test_clicking_a_thumbnail_opens_it_and_more_like_this_searches_from_it(page):
    page.fill("#q", "a blue circle")
    page.keyboard.press("Enter")
    page.wait_for_selector("#results li button")
    chosen = page.locator("#results li .path").nth(2).inner_text()
    page.locator("#results li button").nth(2).click()
    viewer = page.locator("#viewer")
    assert viewer.is_visible()
    page.wait_for_function(
        "() => document.getElementById('viewer-image').complete"
        " && document.getElementById('viewer-image').naturalWidth > 0"
    )
    assert page.locator("#viewer-path").inner_text() == chosen
    page.wait_for_selector("#tags li")  # its describe tags
    page.keyboard.press("ArrowRight")
    assert page.locator("#viewer-path").inner_text() != chosen
    page.keyboard.press("ArrowLeft")
    assert page.locator("#viewer-path").inner_text() == chosen
    page.click("#more")
    page.wait_for_function("() => location.search.startsWith('?similar=')")
    page.wait_for_function("() => document.querySelectorAll('#results li').length > 0")
    assert not viewer.is_visible()
    paths = page.locator("#results li .path").all_inner_texts()
    assert chosen not in paths and len(paths) == SHOWN
    page.go_back()
    page.wait_for_function("() => document.getElementById('q').value === 'a blue circle'")


def test_the_keyboard_alone_finds_and_opens_a_result(page):
    page.keyboard.press("/")
    assert page.evaluate("() => document.activeElement.id") == "q"
    page.keyboard.type("a green field")
    page.keyboard.press("Enter")
    page.wait_for_selector("#results li button")
    page.locator("#results li button").first.focus()
    page.keyboard.press("Enter")
    assert page.locator("#viewer").is_visible()
    page.keyboard.press("Escape")
    assert not page.locator("#viewer").is_visible()
    assert page.evaluate("() => document.activeElement.closest('#results') !== null")


def test_a_bad_query_shows_the_servers_message(page):
    page.fill("#q", "-people")
    page.keyboard.press("Enter")
    page.wait_for_selector("#status.error")
    assert "nothing to search for" in page.locator("#status").inner_text()
    assert [url.split("?")[0] for url in page.failed] == [page.url.split("?")[0] + "api/search"]
    page.failed.clear()


def test_the_page_fits_a_phone_screen(browser, site):
    context = browser.new_context(viewport={"width": 375, "height": 700}, is_mobile=True)
    page = context.new_page()
    page.goto(site[0] + "?q=sky")
    page.wait_for_selector("#results li img")
    overflow = page.evaluate("() => document.documentElement.scrollWidth > window.innerWidth")
    columns = page.evaluate(
        "() => getComputedStyle(document.getElementById('results'))"
        ".gridTemplateColumns.split(' ').length"
    )
    context.close()
    assert not overflow
    assert columns == 2


def test_more_results_asks_for_twice_as_many_until_there_are_no_more(page):
    page.fill("#q", "a photo")
    page.keyboard.press("Enter")
    page.wait_for_selector("#results li")
    assert page.locator("#results li").count() == SHOWN
    first = page.locator("#results li .path").all_inner_texts()
    page.click("#more-results")
    page.wait_for_function(f"() => document.querySelectorAll('#results li').length > {SHOWN}")
    every = page.locator("#results li .path").all_inner_texts()
    assert len(every) == len(NAMES) and every[:SHOWN] == first
    assert page.locator("#more-results").is_hidden()  # all of them are on screen
