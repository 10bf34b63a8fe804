"""The built-in synthetic captioned set: coloured shapes on plain backgrounds, drawn on first use
and identical on every machine, so an evaluation or a training run needs no download."""

from __future__ import annotations

import itertools
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..cache import cache_dir as default_cache_dir
from .errors import DatasetError, reason

SPLITS = ("train", "val", "test")

SYNTHETIC_VERSION = "v1"
"""Part of the cache folder's name: change it whenever drawing or captions change."""

DEFAULT_SYNTHETIC_SIZE = 500
SYNTHETIC_IMAGE_SIZE = 128
_SEED = 20240617

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross", "ring")
COLOURS = {
    "red": (220, 20, 20),
    "green": (20, 160, 40),
    "blue": (30, 60, 220),
    "yellow": (250, 220, 0),
    "purple": (130, 40, 170),
    "orange": (250, 130, 0),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}
# position: (column, row) of a 3x3 grid, and how a sentence places a shape there.
POSITIONS = {
    "top left": ((0, 0), "in the top left corner"),
    "top": ((1, 0), "at the top"),
    "top right": ((2, 0), "in the top right corner"),
    "left": ((0, 1), "on the left"),
    "centre": ((1, 1), "in the centre"),
    "right": ((2, 1), "on the right"),
    "bottom left": ((0, 2), "in the bottom left corner"),
    "bottom": ((1, 2), "at the bottom"),
    "bottom right": ((2, 2), "in the bottom right corner"),
}
SIZES = {"big": 20, "small": 12}  # radius in pixels; a big shape just fits its grid cell
_CELL_CENTRES = (22, 64, 106)

# The shape's colour always comes right before the shape's name, so no sentence can be read
# with the two colours swapped.
CAPTION_TEMPLATES = (
    "{a_size} {colour} {shape} {where} of {a_background} background",
    "{a_background} picture with {a_size} {colour} {shape} {where}",
    "{position}: {a_size} {colour} {shape}, on {background}",
    "{size} {colour} {shape}, {position}, {background} background",
    "{where}, {a_size} {colour} {shape} against {a_background} background",
    "there is {a_size} {colour} {shape} {where}, the background is {background}",
)
CAPTIONS_PER_IMAGE = 5


@dataclass(frozen=True)
class _Scene:
    shape: str
    colour: str
    background: str
    position: str
    size: str


def _all_scenes() -> list[_Scene]:
    """Every attribute combination, in a fixed order: 7 x 8 x 7 x 9 x 2 = 7056."""
    return [
        _Scene(shape, colour, background, position, size)
        for shape, colour, background, position, size in itertools.product(
            SHAPES, COLOURS, COLOURS, POSITIONS, SIZES
        )
        if colour != background
    ]


MAX_SYNTHETIC_SIZE = (
    len(SHAPES) * len(COLOURS) * (len(COLOURS) - 1) * len(POSITIONS) * len(SIZES) // len(SPLITS)
)
"""The largest N for which test, val and train can be disjoint: 7056 // 3 = 2352."""


def _synthetic_split(n: int, split: str) -> list[tuple[_Scene, tuple[str, ...]]]:
    """The scenes of one split with their captions: (n,) pairs, identical on every machine."""
    scenes = _all_scenes()
    rng = np.random.default_rng(_SEED)
    # argsort of uniform doubles rather than rng.permutation: it depends only on PCG64's stream
    # and the float conversion, which numpy keeps stable across versions.
    order = np.argsort(rng.random(len(scenes)), kind="stable")
    picks = np.argsort(rng.random((len(scenes), len(CAPTION_TEMPLATES))), axis=1, kind="stable")
    start = {"test": 0, "val": 1, "train": 2}[split] * n
    chosen = []
    for index in order[start : start + n]:
        # Templates are chosen per combination, so an image's captions do not depend on N.
        templates = sorted(picks[index, :CAPTIONS_PER_IMAGE])
        chosen.append((scenes[index], tuple(_caption(scenes[index], t) for t in templates)))
    return chosen


def _caption(scene: _Scene, template: int) -> str:
    return CAPTION_TEMPLATES[template].format(
        shape=scene.shape,
        colour=scene.colour,
        size=scene.size,
        a_size=_with_article(scene.size),
        background=scene.background,
        a_background=_with_article(scene.background),
        position=scene.position,
        where=POSITIONS[scene.position][1],
    )


def _with_article(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _draw_scene(scene: _Scene) -> Image.Image:
    """The picture of one scene: (128, 128) RGB, two colours only (no anti-aliasing)."""
    image = Image.new("RGB", (SYNTHETIC_IMAGE_SIZE,) * 2, COLOURS[scene.background])
    draw = ImageDraw.Draw(image)
    (column, row), _ = POSITIONS[scene.position]
    x, y, r = _CELL_CENTRES[column], _CELL_CENTRES[row], SIZES[scene.size]
    fill = COLOURS[scene.colour]
    if scene.shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif scene.shape == "ring":
        draw.ellipse((x - r, y - r, x + r, y + r), outline=fill, width=max(3, round(0.35 * r)))
    elif scene.shape == "square":
        s = round(0.85 * r)  # a square as wide as the circle would look bigger than it
        draw.rectangle((x - s, y - s, x + s, y + s), fill=fill)
    elif scene.shape == "triangle":
        draw.polygon([(x, y - r), (x + r, y + r * 0.8), (x - r, y + r * 0.8)], fill=fill)
    elif scene.shape == "diamond":
        draw.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=fill)
    elif scene.shape == "star":
        draw.polygon(_star_points(x, y, r), fill=fill)
    elif scene.shape == "cross":
        t = round(0.35 * r)
        draw.rectangle((x - r, y - t, x + r, y + t), fill=fill)
        draw.rectangle((x - t, y - r, x + t, y + r), fill=fill)
    return image


def _star_points(x: float, y: float, r: float) -> list[tuple[float, float]]:
    """A five-pointed star, one point up; inner radius 0.45 r keeps the arms thick."""
    points = []
    for k in range(10):
        radius = r if k % 2 == 0 else 0.45 * r
        angle = np.pi * k / 5
        points.append((x + radius * np.sin(angle), y - radius * np.cos(angle)))
    return points


@dataclass(frozen=True)
class SyntheticSplit:
    """One split of the synthetic set as drawn on disk: images[i] in `folder` has captions[i]."""

    name: str
    folder: Path
    images: tuple[str, ...]
    captions: tuple[tuple[str, ...], ...]


def synthetic_split(spec: str, split: str, cache_dir: Path | None = None) -> SyntheticSplit:
    """The split of "synthetic" or "synthetic:N", drawn into cache_dir on first use
    (default $RETRIEVAL_CACHE, else ~/.cache/retrieval). Raises DatasetError."""
    n = _synthetic_size(spec)
    if split not in SPLITS:
        raise DatasetError(f"{spec}: no split {split!r}; splits: {', '.join(SPLITS)}")
    base = cache_dir if cache_dir is not None else default_cache_dir()
    folder = Path(os.path.abspath(Path(base).expanduser())) / "synthetic"
    folder = folder / f"{SYNTHETIC_VERSION}-N{n}" / split
    scenes = _synthetic_split(n, split)
    names = [f"{i:05d}.png" for i in range(n)]
    if not folder.is_dir():
        _generate(folder, [scene for scene, _ in scenes], names)
    return SyntheticSplit(
        name=f"synthetic:{n}/{split}",
        folder=folder,
        images=tuple(names),
        captions=tuple(captions for _, captions in scenes),
    )


def _synthetic_size(spec: str) -> int:
    if spec == "synthetic":
        return DEFAULT_SYNTHETIC_SIZE
    text = spec.partition(":")[2]
    if not text.isdigit() or int(text) < 1:
        raise DatasetError(f"{spec}: expected synthetic:N with N a positive whole number")
    n = int(text)
    if n > MAX_SYNTHETIC_SIZE:
        raise DatasetError(
            f"{spec}: at most {MAX_SYNTHETIC_SIZE} images per split fit (there are "
            f"{len(SPLITS) * MAX_SYNTHETIC_SIZE} distinct pictures for the three splits)"
        )
    return n


def _generate(folder: Path, scenes: Sequence[_Scene], names: Sequence[str]) -> None:
    """Draw a split into a hidden sibling folder, then rename it into place in one step, so a
    reader never sees half a split; if another process got there first, keep theirs."""
    temporary = folder.parent / f".{folder.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        temporary.mkdir()
        for scene, name in zip(scenes, names, strict=True):
            _draw_scene(scene).save(temporary / name, format="PNG")
        try:
            os.rename(temporary, folder)
        except OSError:
            if not folder.is_dir():
                raise
    except OSError as e:
        raise DatasetError(f"cannot write the synthetic dataset to {folder} ({reason(e)})") from e
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
