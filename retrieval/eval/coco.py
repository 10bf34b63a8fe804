"""COCO's own caption files (captions_train2017.json, captions_val2017.json), read as
CLIP_benchmark's `mscoco_captions` reads them through torchvision's CocoCaptions: images in the
order of their ids, each with the captions of its annotations in file order.

An image with no caption cannot be a query's answer nor ask one, so it is left out and counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import RetrievalError


class CocoFormatError(RetrievalError):
    """A COCO caption file is malformed; the message names the file and the entry."""


@dataclass(frozen=True)
class CocoCaptions:
    """The captioned images of one COCO caption file.

    images[i] (a `file_name`) has captions[i]; origins[i] says where it was declared
    ("captions_val2017.json images[3]"); uncaptioned counts the images left out.
    """

    images: tuple[str, ...]
    captions: tuple[tuple[str, ...], ...]
    origins: tuple[str, ...]
    uncaptioned: int


def is_coco_captions(data: object) -> bool:
    """Whether parsed JSON has COCO's layout: top-level `images` and `annotations`."""
    return isinstance(data, dict) and "annotations" in data and "images" in data


def default_images_dir(path: Path) -> Path:
    """Where COCO puts a caption file's images: captions_val2017.json -> a `val2017` folder
    beside it or beside its `annotations` folder; else the file's own folder."""
    split = path.stem.removeprefix("captions_")
    for folder in (path.parent / split, path.parent.parent / split):
        if split and folder.is_dir():
            return folder
    return path.parent


def read_coco_captions(data: dict[str, Any], label: str) -> CocoCaptions:
    """Check a parsed COCO caption file and group its captions by image.

    label: the file's name, for messages. Raises CocoFormatError naming the file and entry.
    """
    files = _images(data.get("images"), label)
    annotations = data.get("annotations")
    if not isinstance(annotations, list):
        raise CocoFormatError(f'{label}: "annotations" is not a list')
    captions: dict[int, list[str]] = {image_id: [] for image_id in files}
    for number, entry in enumerate(annotations):
        where = f"{label}: annotations[{number}]"
        if not isinstance(entry, dict):
            raise CocoFormatError(f"{where}: expected an object, found {type(entry).__name__}")
        image_id = entry.get("image_id")
        if not _is_id(image_id):
            raise CocoFormatError(f'{where}: no integer "image_id"')
        if image_id not in files:
            raise CocoFormatError(f"{where}: image_id {image_id} is not in images")
        caption = entry.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            raise CocoFormatError(f'{where}: no "caption" text')
        captions[image_id].append(caption.strip())
    kept = [image_id for image_id in sorted(files) if captions[image_id]]
    if not kept:
        raise CocoFormatError(f"{label}: none of its {len(files)} images has a caption")
    return CocoCaptions(
        images=tuple(files[image_id][0] for image_id in kept),
        captions=tuple(tuple(captions[image_id]) for image_id in kept),
        origins=tuple(f"{label} images[{files[image_id][1]}]" for image_id in kept),
        uncaptioned=len(files) - len(kept),
    )


def _images(entries: object, label: str) -> dict[int, tuple[str, int]]:
    """image id -> (file_name, its position in `images`)."""
    if not isinstance(entries, list):
        raise CocoFormatError(f'{label}: "images" is not a list')
    files: dict[int, tuple[str, int]] = {}
    for number, entry in enumerate(entries):
        where = f"{label}: images[{number}]"
        if not isinstance(entry, dict):
            raise CocoFormatError(f"{where}: expected an object, found {type(entry).__name__}")
        image_id, file_name = entry.get("id"), entry.get("file_name")
        if not _is_id(image_id):
            raise CocoFormatError(f'{where}: no integer "id"')
        if not isinstance(file_name, str) or not file_name.strip():
            raise CocoFormatError(f'{where}: no "file_name"')
        if image_id in files:
            raise CocoFormatError(f"{where}: id {image_id} is also images[{files[image_id][1]}]")
        files[image_id] = (file_name, number)
    return files


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
