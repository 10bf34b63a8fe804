"""The GPU code paths, run on the CPU: batched JPEG decoding (torchvision decodes JPEG on the
CPU device too) against Pillow, indexing through it against the CPU path, and the split of a
batch that runs out of GPU memory."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import photo
from PIL import Image, ImageOps

from retrieval.encoders.preprocess import resize_and_crop as pillow_resize_and_crop
from retrieval.errors import ImageReadError
from retrieval.gpu_decode import JpegDecoder, JpegJob, orient, read_header, resize_and_crop
from retrieval.images import load_image

SIZE = (64, 64)


def jpeg(image: Image.Image, orientation: int = 1, quality: int = 95) -> bytes:
    out = io.BytesIO()
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    image.save(out, format="JPEG", quality=quality, exif=exif)
    return out.getvalue()


def pillow_input(data: bytes) -> np.ndarray:
    """The CPU path's model input for a file: decode upright, resize, crop."""
    return pillow_resize_and_crop(load_image(data), SIZE, "shortest")


def decoder() -> JpegDecoder:
    return JpegDecoder("cpu", SIZE, "shortest", lambda data, name: pillow_input(data))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_turns_pixels_as_exif_transpose_does(orientation):
    stored = Image.fromarray(np.asarray(photo(orientation, (40, 24))))
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.info["exif"] = exif.tobytes()
    stored.getexif()[0x0112] = orientation
    by_pillow = np.asarray(ImageOps.exif_transpose(stored))
    tensor = torch.from_numpy(np.asarray(stored).copy()).permute(2, 0, 1)
    assert np.array_equal(orient(tensor, orientation).permute(1, 2, 0).numpy(), by_pillow)


@pytest.mark.parametrize("size", [(120, 80), (80, 120), (64, 64), (300, 64)])
def test_resize_and_crop_matches_pillows_geometry(size):
    image = photo(3, size)
    by_pillow = pillow_resize_and_crop(image, SIZE, "shortest").astype(np.int16)
    tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    ours = resize_and_crop(tensor, SIZE, "shortest").numpy().astype(np.int16)
    assert ours.shape == by_pillow.shape
    assert np.abs(ours - by_pillow).mean() < 2.0  # two bicubic filters, same sizes and crop


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_decoded_batch_equals_the_pillow_path_upright(orientation):
    files = [jpeg(photo(i, (96, 72)), orientation) for i in range(4)]
    jobs = [JpegJob(data, read_header(data, f"f{i}"), f"f{i}") for i, data in enumerate(files)]
    results = decoder().decode(jobs)
    for data, result in zip(files, results, strict=True):
        expected = pillow_input(data).astype(np.int16)
        assert np.abs(result.numpy().astype(np.int16) - expected).mean() < 2.0


def test_header_gives_the_upright_size_and_leaves_other_files_to_the_cpu():
    header = read_header(jpeg(photo(1, (96, 72)), 6), "x.jpg")
    assert (header.width, header.height, header.orientation) == (72, 96, 6)
    png = io.BytesIO()
    photo(1).save(png, format="PNG")
    assert read_header(png.getvalue(), "x.png") is None
    cmyk = io.BytesIO()
    photo(1).convert("CMYK").save(cmyk, format="JPEG")
    assert read_header(cmyk.getvalue(), "cmyk.jpg") is None  # nvJPEG does not take CMYK
    assert read_header(b"not an image", "x.jpg") is None


def test_header_refuses_a_decompression_bomb():
    with pytest.raises(ImageReadError, match="decompression-bomb cap"):
        read_header(jpeg(photo(1, (96, 72))), "big.jpg", max_pixels=1000)


def test_a_file_the_device_cannot_decode_falls_back_alone():
    good = [jpeg(photo(i, (96, 72))) for i in range(3)]
    broken = good[1][:200] + b"\x00" * 50  # a valid header, then garbage
    files = [good[0], broken, good[2]]
    calls = []

    def fallback(data: bytes, name: str) -> np.ndarray:
        calls.append(name)
        try:
            return pillow_input(data)
        except ImageReadError as e:
            raise ImageReadError(name, e.reason) from e

    jobs = [JpegJob(d, read_header(d, f"f{i}"), f"f{i}") for i, d in enumerate(files)]
    decoder = JpegDecoder("cpu", SIZE, "shortest", fallback)
    results = decoder.decode(jobs)
    assert calls == ["f1"] and decoder.fallbacks == 1
    assert isinstance(results[1], ImageReadError) and results[1].name == "f1"
    for i in (0, 2):
        expected = pillow_input(files[i]).astype(np.int16)
        assert np.abs(results[i].numpy().astype(np.int16) - expected).mean() < 2.0


def test_indexing_through_the_device_decoder_equals_the_cpu_path(tmp_path, encoder, monkeypatch):
    from reference import stored_vectors

    import retrieval.indexer
    from retrieval.indexer import _cpu_fallback, index_folder

    def write_folder(root):
        root.mkdir()
        for i, orientation in enumerate([1, 6, 3, 8, 1]):
            (root / f"p{i}.jpg").write_bytes(jpeg(photo(40 + i, (120, 90)), orientation))
        photo(50).convert("CMYK").save(root / "cmyk.jpg")  # the CPU decodes it
        photo(51).save(root / "plain.png")
        (root / "cut.jpg").write_bytes(jpeg(photo(52, (120, 90)))[:600] + b"\0" * 64)
        return root

    cpu_root = write_folder(tmp_path / "cpu")
    cpu = index_folder(cpu_root, encoder=encoder, model=encoder.identity, draft=False)
    size, mode = encoder.image_size, encoder.preprocess_cfg.get("resize_mode", "shortest")
    decoder = JpegDecoder("cpu", size, mode, _cpu_fallback(encoder))
    monkeypatch.setattr(retrieval.indexer, "jpeg_decoder", lambda decode, encoder: decoder)
    device_root = write_folder(tmp_path / "device")
    device = index_folder(device_root, encoder=encoder, model=encoder.identity, decode="gpu")

    assert decoder.fallbacks == 1  # the cut JPEG; the CMYK and PNG never went to the device
    assert device.encoded == cpu.encoded == 7
    assert [(s.path, s.error) for s in device.skipped] == [(s.path, s.error) for s in cpu.skipped]
    assert [s.path for s in device.skipped] == ["cut.jpg"]
    expected, got = stored_vectors(cpu_root), stored_vectors(device_root)
    assert set(got) == set(expected)
    for path in expected:
        assert float(expected[path] @ got[path]) > 0.995, path


def test_decode_gpu_without_cuda_is_a_clear_error(tmp_path, encoder):
    from retrieval.errors import RetrievalError
    from retrieval.indexer import index_folder

    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "a.jpg").write_bytes(jpeg(photo(1)))
    with pytest.raises(RetrievalError, match="--decode gpu needs the torch backend on a CUDA"):
        index_folder(tmp_path / "p", encoder=encoder, model=encoder.identity, decode="gpu")


def test_a_batch_that_runs_out_of_gpu_memory_is_split(encoder):
    import dataclasses

    class SmallMemory:
        """The model, but any batch over two images runs out of (pretend) GPU memory."""

        def __init__(self, model):
            self.model, self.batches = model, []

        def encode_image(self, batch):
            self.batches.append(len(batch))
            if len(batch) > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            return self.model.encode_image(batch)

    small = SmallMemory(encoder.model)
    limited = dataclasses.replace(encoder, model=small)
    height, width = encoder.image_size
    pixels = np.random.default_rng(0).integers(0, 256, (5, height, width, 3), dtype=np.uint8)
    got = limited.encode_images(pixels)
    one_by_one = np.concatenate([encoder.encode_images(pixels[i : i + 1]) for i in range(5)])
    assert np.allclose(got, one_by_one, atol=1e-5)
    assert small.batches == [5, 2, 2, 1]
    small.batches.clear()
    assert np.allclose(limited.encode_images(pixels[::-1].copy()), one_by_one[::-1], atol=1e-5)
    assert small.batches == [2, 2, 1]  # the size that fitted, without running out again
