"""Camera RAW files: DNGs the test writes itself, decoded by LibRaw, checked against the pixels
they were made from (turned by hand where the file says it is turned)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from conftest import photo
from dng import bayer, write_dng
from PIL import Image

from index.collection import default_dir
from retrieval.errors import ImageReadError
from retrieval.images import decode_image
from retrieval.indexer import index_folder
from retrieval.raw import RAW_EXTENSIONS

SENSOR_W, SENSOR_H = 192, 144

# Flat patches on a 4 x 3 grid, so the demosaiced picture can be checked patch by patch.
PATCHES = [
    [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0.5, 0.5, 0.5)],
    [(0, 0, 1), (1, 0, 0), (0.5, 0.5, 0.5), (0, 1, 0)],
    [(0, 1, 0), (0.5, 0.5, 0.5), (1, 0, 0), (0, 0, 1)],
]

# How each EXIF orientation is made upright, by hand with numpy on (h, w, 3) arrays.
BY_HAND = {
    3: lambda a: np.rot90(a, 2),
    6: lambda a: np.rot90(a, -1),
    8: lambda a: np.rot90(a, 1),
}


def scene() -> np.ndarray:
    """The sensor's picture: float (144, 192, 3) in [0, 1]."""
    rows, cols = len(PATCHES), len(PATCHES[0])
    colours = np.array(PATCHES, dtype=np.float64)
    return np.kron(colours, np.ones((SENSOR_H // rows, SENSOR_W // cols, 1)))


def jpeg(image: Image.Image, orientation: int | None = None) -> bytes:
    """A JPEG as cameras embed one: with an EXIF orientation, its APP1 segment comes first."""
    out = io.BytesIO()
    if orientation is None:
        image.save(out, format="JPEG", quality=95)
        return out.getvalue()
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(out, format="JPEG", quality=95, exif=exif)
    data = out.getvalue()
    assert data[2:4] == b"\xff\xe0"  # Pillow's JFIF APP0 segment, which cameras do not write
    return data[:2] + data[4 + int.from_bytes(data[4:6], "big") :]


def raw_file(
    folder: Path,
    name: str = "photo.dng",
    *,
    orientation: int = 1,
    preview: Image.Image | None = None,
    preview_orientation: int | None = None,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = None if preview is None else jpeg(preview, preview_orientation)
    size = (0, 0) if preview is None else preview.size
    return write_dng(
        folder / name, bayer(scene()), orientation=orientation, preview=data, preview_size=size
    )


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def assert_shows_the_patches(image: Image.Image) -> None:
    """Each patch's centre has the patch's colour: the sensor data was demosaiced."""
    values = pixels(image)
    h, w, _ = values.shape
    rows, cols = len(PATCHES), len(PATCHES[0])
    for r, row in enumerate(PATCHES):
        for c, colour in enumerate(row):
            y, x = (2 * r + 1) * h // (2 * rows), (2 * c + 1) * w // (2 * cols)
            seen = values[y - 2 : y + 3, x - 2 : x + 3].reshape(-1, 3).mean(axis=0)
            if max(colour) == min(colour):  # grey: the channels agree
                assert np.ptp(seen) < 40, (r, c, seen)
            else:
                assert int(np.argmax(seen)) == int(np.argmax(colour)), (r, c, seen)
                assert seen.max() - np.sort(seen)[-2] > 60, (r, c, seen)


def test_a_large_enough_embedded_preview_is_used_instead_of_demosaicing(tmp_path: Path):
    preview = photo(5, (SENSOR_W, SENSOR_H))
    image, size = decode_image(raw_file(tmp_path, preview=preview), min_size=SENSOR_H)
    assert size == (SENSOR_W, SENSOR_H)
    assert image.mode == "RGB"
    assert image.size == (SENSOR_W, SENSOR_H)
    assert np.abs(pixels(image) - pixels(preview)).mean() < 6


def test_a_raw_without_a_preview_is_demosaiced_at_full_size(tmp_path: Path):
    image, size = decode_image(raw_file(tmp_path), min_size=SENSOR_H)
    assert size == image.size == (SENSOR_W, SENSOR_H)
    assert_shows_the_patches(image)


def test_demosaicing_takes_half_size_when_that_is_still_large_enough(tmp_path: Path):
    image, size = decode_image(raw_file(tmp_path), min_size=SENSOR_H // 2)
    assert size == (SENSOR_W, SENSOR_H)
    assert image.size == (SENSOR_W // 2, SENSOR_H // 2)
    assert_shows_the_patches(image)


def test_a_preview_smaller_than_the_model_needs_is_passed_over(tmp_path: Path):
    small = photo(5, (48, 36))
    image, _ = decode_image(raw_file(tmp_path, preview=small), min_size=64)
    assert image.size == (SENSOR_W // 2, SENSOR_H // 2)
    assert_shows_the_patches(image)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_a_turned_raw_decodes_to_the_sensor_pixels_turned_by_hand(tmp_path: Path, orientation: int):
    upright, _ = decode_image(raw_file(tmp_path / "a"), min_size=SENSOR_H)
    turned, size = decode_image(
        raw_file(tmp_path / "b", orientation=orientation), min_size=SENSOR_H
    )
    expected = BY_HAND[orientation](pixels(upright))
    assert size == turned.size == (expected.shape[1], expected.shape[0])
    assert np.array_equal(pixels(turned), expected)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_a_preview_without_exif_is_turned_by_the_raws_orientation(tmp_path: Path, orientation: int):
    preview = photo(7, (SENSOR_W, SENSOR_H))
    path = raw_file(tmp_path, orientation=orientation, preview=preview)
    image, size = decode_image(path, min_size=SENSOR_H)
    expected = BY_HAND[orientation](pixels(preview))
    assert size == image.size == (expected.shape[1], expected.shape[0])
    assert np.abs(pixels(image) - expected).mean() < 6


def test_a_previews_own_exif_orientation_wins_over_the_raws(tmp_path: Path):
    preview = photo(8, (SENSOR_W, SENSOR_H))
    path = raw_file(tmp_path, orientation=6, preview=preview, preview_orientation=3)
    image, _ = decode_image(path, min_size=SENSOR_H)
    assert np.abs(pixels(image) - BY_HAND[3](pixels(preview))).mean() < 6


def test_a_truncated_raw_raises_a_clear_error(tmp_path: Path):
    whole = raw_file(tmp_path, preview=photo(5, (SENSOR_W, SENSOR_H))).read_bytes()
    cut = tmp_path / "cut.nef"
    cut.write_bytes(whole[: len(whole) // 3])
    with pytest.raises(ImageReadError) as caught:
        decode_image(cut.read_bytes(), min_size=64, name="cut.nef")
    assert caught.value.name == "cut.nef"
    assert "LibRaw" in caught.value.reason


def test_a_raw_whose_sensor_data_lies_past_its_end_raises_a_clear_error(tmp_path: Path):
    data = bytearray(raw_file(tmp_path).read_bytes())
    ifd = int.from_bytes(data[4:8], "little")
    for entry in range(int.from_bytes(data[ifd : ifd + 2], "little")):
        at = ifd + 2 + 12 * entry
        if int.from_bytes(data[at : at + 2], "little") == 273:  # StripOffsets
            data[at + 8 : at + 12] = (len(data) + 16).to_bytes(4, "little")
    cut = tmp_path / "cut.arw"
    cut.write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match=r"cut\.arw: LibRaw cannot read it \("):
        decode_image(cut, min_size=64)


def test_a_raw_over_the_pixel_cap_is_refused_before_decoding(tmp_path: Path):
    with pytest.raises(ImageReadError, match="decompression-bomb cap"):
        decode_image(raw_file(tmp_path), min_size=64, max_pixels=SENSOR_W * SENSOR_H - 1)


def test_every_raw_extension_is_indexed_and_a_corrupt_one_skipped_with_its_reason(
    tmp_path: Path, encoder
):
    root = tmp_path / "photos"
    source = raw_file(tmp_path / "made", preview=photo(5, (SENSOR_W, SENSOR_H)))
    root.mkdir()
    names = [f"shot{ext.upper() if i % 2 else ext}" for i, ext in enumerate(sorted(RAW_EXTENSIONS))]
    assert len(names) == 9
    for name in names:
        (root / name).write_bytes(source.read_bytes())
    (root / "broken.nef").write_bytes(source.read_bytes()[:4000])

    report = index_folder(root, model=encoder.identity, encoder=encoder, batch_size=4)

    assert report.added == 9
    skipped = {s.path: s.error for s in report.skipped}
    assert list(skipped) == ["broken.nef"]
    assert "LibRaw" in skipped["broken.nef"]


def test_the_web_app_shows_a_raw_as_an_upright_jpeg(tmp_path: Path, encoder, monkeypatch):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from retrieval.web import create_app, media

    monkeypatch.setattr(media, "RAW_VIEW_SIDE", SENSOR_H)  # the preview is as large as the RAW

    root = tmp_path / "photos"
    preview = photo(9, (SENSOR_W, SENSOR_H))
    raw_file(root, "turned.cr2", orientation=6, preview=preview)
    index_folder(root, model=encoder.identity, encoder=encoder)
    client = TestClient(create_app(default_dir(root), encoder=encoder))
    (hit,) = client.get("/api/search", params={"q": "anything"}).json()
    shown = {}
    for what in ("image", "thumbnail"):
        response = client.get(f"/api/items/{hit['id']}/{what}")
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/jpeg"
        shown[what] = Image.open(io.BytesIO(response.content))
        assert shown[what].format == "JPEG"
        assert shown[what].size == (SENSOR_H, SENSOR_W)  # upright: turned a quarter
    # The viewer shows the embedded preview; a thumbnail larger than it comes from the sensor.
    assert np.abs(pixels(shown["image"]) - BY_HAND[6](pixels(preview))).mean() < 8
    assert_shows_the_patches(
        Image.fromarray(np.rot90(pixels(shown["thumbnail"]), 1).astype(np.uint8))
    )
