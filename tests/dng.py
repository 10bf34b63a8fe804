"""Write small DNG files for the tests: a Bayer (RGGB) sensor image with the tags LibRaw needs to
demosaic it, optionally behind a JPEG preview in IFD0 with the sensor data in a SubIFD, the way
cameras and Adobe's converter lay DNGs out.

The TIFF structure is written by hand (a few dozen lines) so that every tag is visible here.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

BLACK_LEVEL = 64
WHITE_LEVEL = 4095

_BYTE, _ASCII, _SHORT, _LONG, _RATIONAL, _SRATIONAL = 1, 2, 3, 4, 5, 10
_FORMATS = {_BYTE: "B", _SHORT: "H", _LONG: "I", _RATIONAL: "II", _SRATIONAL: "ii"}
_SUB_IFDS = 330


def bayer(scene: np.ndarray) -> np.ndarray:
    """An RGGB mosaic of an (h, w, 3) scene in [0, 1]: uint16 (h, w), black 64, white 4095."""
    h, w, _ = scene.shape
    cfa = np.empty((h, w), np.float64)
    cfa[0::2, 0::2] = scene[0::2, 0::2, 0]
    cfa[0::2, 1::2] = scene[0::2, 1::2, 1]
    cfa[1::2, 0::2] = scene[1::2, 0::2, 1]
    cfa[1::2, 1::2] = scene[1::2, 1::2, 2]
    return np.rint(BLACK_LEVEL + cfa * (WHITE_LEVEL - BLACK_LEVEL)).astype(np.uint16)


def write_dng(
    path: Path,
    cfa: np.ndarray,
    *,
    orientation: int = 1,
    preview: bytes | None = None,
    preview_size: tuple[int, int] = (0, 0),
) -> Path:
    """Write `cfa` (uint16 (h, w), RGGB) as a DNG; preview: JPEG bytes of (width, height)."""
    h, w = cfa.shape
    camera = [
        (271, _ASCII, "Testmaker"),  # Make
        (272, _ASCII, "Testcam"),  # Model
        (274, _SHORT, [orientation]),  # Orientation
        (50706, _BYTE, [1, 4, 0, 0]),  # DNGVersion
        (50707, _BYTE, [1, 1, 0, 0]),  # DNGBackwardVersion
        (50708, _ASCII, "Testmaker Testcam"),  # UniqueCameraModel
        (50721, _SRATIONAL, [1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1]),  # ColorMatrix1
        (50728, _RATIONAL, [1, 1, 1, 1, 1, 1]),  # AsShotNeutral: daylight, no cast
        (50778, _SHORT, [21]),  # CalibrationIlluminant1: D65
    ]
    sensor = [
        (254, _LONG, [0]),  # NewSubfileType: the main image
        (256, _LONG, [w]),
        (257, _LONG, [h]),
        (258, _SHORT, [16]),  # BitsPerSample
        (259, _SHORT, [1]),  # Compression: none
        (262, _SHORT, [32803]),  # PhotometricInterpretation: CFA
        (277, _SHORT, [1]),  # SamplesPerPixel
        (278, _LONG, [h]),  # RowsPerStrip
        (284, _SHORT, [1]),  # PlanarConfiguration
        (33421, _SHORT, [2, 2]),  # CFARepeatPatternDim
        (33422, _BYTE, [0, 1, 1, 2]),  # CFAPattern: R G / G B
        (50710, _BYTE, [0, 1, 2]),  # CFAPlaneColor
        (50711, _SHORT, [1]),  # CFALayout: rectangular
        (50714, _SHORT, [BLACK_LEVEL]),  # BlackLevel
        (50717, _SHORT, [WHITE_LEVEL]),  # WhiteLevel
    ]
    out = bytearray(b"II*\x00\x00\x00\x00\x00")
    sensor_strip = _append(out, cfa.astype("<u2").tobytes())
    sensor += [(273, _LONG, [sensor_strip]), (279, _LONG, [cfa.size * 2])]
    if preview is None:
        first = _append_ifd(out, sensor + camera)
    else:
        preview_strip = _append(out, preview)
        sub_ifd = _append_ifd(out, sensor)
        pw, ph = preview_size
        first = _append_ifd(
            out,
            [
                *camera,
                (254, _LONG, [1]),  # NewSubfileType: a reduced-resolution preview
                (256, _LONG, [pw]),
                (257, _LONG, [ph]),
                (258, _SHORT, [8, 8, 8]),
                (259, _SHORT, [7]),  # Compression: JPEG
                (262, _SHORT, [6]),  # PhotometricInterpretation: YCbCr
                (273, _LONG, [preview_strip]),
                (277, _SHORT, [3]),
                (278, _LONG, [ph]),
                (279, _LONG, [len(preview)]),
                (_SUB_IFDS, _LONG, [sub_ifd]),
            ],
        )
    out[4:8] = struct.pack("<I", first)
    path.write_bytes(bytes(out))
    return path


def _append(out: bytearray, blob: bytes) -> int:
    if len(out) % 2:
        out.append(0)
    offset = len(out)
    out.extend(blob)
    return offset


def _append_ifd(out: bytearray, entries: list[tuple[int, int, object]]) -> int:
    """Append one IFD (entries sorted by tag, values over 4 bytes after it); its offset."""
    if len(out) % 2:
        out.append(0)
    start = len(out)
    entries = sorted(entries, key=lambda entry: entry[0])
    overflow_at = start + 2 + 12 * len(entries) + 4
    table, overflow = bytearray(struct.pack("<H", len(entries))), bytearray()
    for tag, kind, values in entries:
        if kind == _ASCII:
            payload, count = str(values).encode() + b"\x00", len(str(values)) + 1
        else:
            fmt = _FORMATS[kind]
            payload = struct.pack("<" + fmt[0] * len(values), *values)  # type: ignore[arg-type]
            count = len(values) // len(fmt)  # type: ignore[arg-type]
        if len(payload) <= 4:
            field = payload.ljust(4, b"\x00")
        else:
            field = struct.pack("<I", overflow_at + len(overflow))
            overflow.extend(payload + b"\x00" * (len(payload) % 2))
        table.extend(struct.pack("<HHI", tag, kind, count) + field)
    out.extend(table + b"\x00\x00\x00\x00" + overflow)
    return start
