"""Decoding: every format and mode to upright RGB, and a clear error for each bad file."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import photo
from PIL import Image

from retrieval.errors import ImageReadError
from retrieval.images import decode_image, load_image

# For each EXIF orientation, the transform that turns the stored pixels upright.
UPRIGHT = {
    1: [],
    2: [Image.Transpose.FLIP_LEFT_RIGHT],
    3: [Image.Transpose.ROTATE_180],
    4: [Image.Transpose.FLIP_TOP_BOTTOM],
    5: [Image.Transpose.TRANSPOSE],
    6: [Image.Transpose.ROTATE_270],
    7: [Image.Transpose.TRANSVERSE],
    8: [Image.Transpose.ROTATE_90],
}
# The inverse of each: what a camera stores for an upright scene.
_INVERSE = {Image.Transpose.ROTATE_90: Image.Transpose.ROTATE_270}
_INVERSE |= {v: k for k, v in _INVERSE.items()}
STORED = {o: [_INVERSE.get(t, t) for t in reversed(steps)] for o, steps in UPRIGHT.items()}


def _apply(image: Image.Image, steps: list[Image.Transpose]) -> Image.Image:
    for step in steps:
        image = image.transpose(step)
    return image


def _save_with_orientation(image: Image.Image, path: Path, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, exif=exif, **({"quality": 95} if path.suffix == ".jpg" else {}))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_gives_the_pixels_rotated_by_hand(tmp_path: Path, orientation: int):
    upright = photo(1, size=(64, 48))
    stored = _apply(upright, STORED[orientation])
    path = tmp_path / "o.png"
    _save_with_orientation(stored, path, orientation)

    image, size = decode_image(path)

    # The reference: the stored pixels turned by hand with the transform the tag names.
    by_hand = _apply(Image.open(path).convert("RGB"), UPRIGHT[orientation])
    assert np.array_equal(np.asarray(image), np.asarray(by_hand))
    assert np.array_equal(np.asarray(image), np.asarray(upright))
    assert size == (64, 48)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_jpeg_embeds_like_the_upright_pixels(tmp_path, encoder, orientation):
    upright = photo(2, size=(128, 96))
    upright_path = tmp_path / "upright.jpg"
    upright.save(upright_path, quality=95)
    rotated_path = tmp_path / "rotated.jpg"
    _save_with_orientation(_apply(upright, STORED[orientation]), rotated_path, orientation)

    def embed(image: Image.Image) -> np.ndarray:
        return encoder.encode_images(encoder.prepare(image)[None])[0]

    reference = embed(load_image(upright_path))
    oriented = embed(load_image(rotated_path))
    ignoring_exif = embed(Image.open(rotated_path).convert("RGB"))
    assert float(reference @ oriented) > 0.999
    assert float(reference @ oriented) > float(reference @ ignoring_exif)


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path: Path):
    original = photo(3).convert("RGB")
    path = tmp_path / "cmyk.jpg"
    original.convert("CMYK").save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    image = load_image(path)
    assert image.mode == "RGB"
    diff = np.abs(np.asarray(image, dtype=int) - np.asarray(original, dtype=int))
    assert diff.mean() < 8


def test_16_bit_png_is_scaled_not_clipped(tmp_path: Path):
    values = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (8, 1))
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    image = load_image(path)
    assert image.mode == "RGB"
    grey = np.asarray(image)[..., 0].astype(int)
    expected = np.rint(values / 257.0).astype(int)
    assert np.abs(grey - expected).max() <= 1
    assert grey.max() == 255 and grey.min() == 0


def test_palette_png_transparency_is_composited_on_white(tmp_path: Path):
    pixels = np.zeros((10, 10), dtype=np.uint8)
    pixels[:, 5:] = 1
    image = Image.fromarray(pixels, mode="P")
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    path = tmp_path / "palette.png"
    image.save(path, transparency=0)  # palette entry 0 (red) is fully transparent
    rgb = np.asarray(load_image(path))
    assert (rgb[:, :5] == [255, 255, 255]).all()
    assert (rgb[:, 5:] == [0, 0, 255]).all()


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_on_white(tmp_path: Path, mode: str):
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 3] = 0
    rgba[:, 4:] = [0, 0, 0, 255]
    image = Image.fromarray(rgba, mode="RGBA").convert(mode)
    path = tmp_path / f"alpha-{mode}.png"
    image.save(path)
    rgb = np.asarray(load_image(path))
    assert (rgb[:, :4] == 255).all()
    assert (rgb[:, 4:] == 0).all()


def test_animated_gif_gives_its_first_frame(tmp_path: Path):
    red = Image.new("RGB", (16, 16), (255, 0, 0))
    blue = Image.new("RGB", (16, 16), (0, 0, 255))
    path = tmp_path / "anim.gif"
    red.save(path, save_all=True, append_images=[blue], duration=100, loop=0)
    assert Image.open(path).n_frames == 2
    rgb = np.asarray(load_image(path)).astype(int)
    assert np.abs(rgb - [255, 0, 0]).max() <= 8


@pytest.mark.parametrize("suffix", [".webp", ".bmp", ".tiff", ".png", ".gif"])
def test_common_formats_decode(tmp_path: Path, suffix: str):
    original = photo(4)
    path = tmp_path / f"image{suffix}"
    original.save(path, **({"lossless": True} if suffix == ".webp" else {}))
    image = load_image(path)
    assert image.mode == "RGB" and image.size == original.size
    if suffix != ".gif":  # GIF quantises to a palette
        assert np.array_equal(np.asarray(image), np.asarray(original))


def test_heic_decodes(tmp_path: Path):
    pillow_heif = pytest.importorskip("pillow_heif")
    original = photo(5, size=(128, 96))
    path = tmp_path / "phone.heic"
    try:
        pillow_heif.from_pillow(original).save(path, quality=95)
    except (OSError, RuntimeError, ValueError) as e:  # a build without an HEVC encoder
        pytest.skip(f"pillow-heif cannot encode HEIC here: {e}")
    image = load_image(path)
    assert image.size == (128, 96)
    diff = np.abs(np.asarray(image, dtype=int) - np.asarray(original, dtype=int))
    assert diff.mean() < 12


def test_large_jpeg_is_decoded_at_reduced_scale(tmp_path: Path):
    path = tmp_path / "big.jpg"
    photo(6, size=(4000, 3000)).save(path, quality=90)
    image, size = decode_image(path, min_size=224)
    assert size == (4000, 3000)  # the full size is still reported
    assert image.size == (500, 375)  # 1/8 scale: the smallest that covers 224
    full = Image.open(path).convert("RGB").resize((500, 375), Image.Resampling.BOX)
    diff = np.abs(np.asarray(image, dtype=int) - np.asarray(full, dtype=int))
    assert diff.mean() < 6


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def _png_header_claiming(width: int, height: int) -> bytes:
    """A small PNG file whose header claims width x height pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.jpg", b"", "not an image"),
        ("text.jpg", b"this is not a picture\n", "not an image"),
        ("bomb.png", _png_header_claiming(100_000, 100_000), "decompression-bomb"),
        ("bomb-wide.png", _png_header_claiming(40_000, 5_000), "decompression-bomb"),
    ],
)
def test_bad_files_raise_a_clear_error(tmp_path: Path, name: str, content: bytes, reason: str):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageReadError) as caught:
        load_image(path)
    assert reason in str(caught.value)
    assert name in str(caught.value)


def test_truncated_jpeg_raises_a_clear_error(tmp_path: Path):
    path = tmp_path / "cut.jpg"
    photo(7, size=(256, 256)).save(path, quality=95)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ImageReadError, match=r"cut\.jpg: cannot decode"):
        load_image(path)
