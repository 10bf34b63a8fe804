"""Captioned image datasets for evaluating and training retrieval: Karpathy-split JSON (Flickr30k,
COCO), COCO's own caption files, CSV/TSV of (image, caption) rows, and the built-in synthetic set
(see synthetic.py).

Every loader checks the whole file up front, so a bad dataset fails at once with one line naming
the file (and the line or entry), never halfway through an evaluation.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .coco import CocoFormatError, default_images_dir, is_coco_captions, read_coco_captions
from .errors import DatasetError, reason
from .synthetic import synthetic_split


@dataclass(frozen=True)
class CaptionedDataset:
    """Images with their captions. images[i] (relative to root, POSIX) has captions[i].

    origins[i] says where images[i] was declared ("pairs.csv line 12", "dataset_coco.json image
    40"), for messages. uncaptioned: images the file lists without any caption, left out.
    """

    name: str
    root: Path
    images: tuple[str, ...]
    captions: tuple[tuple[str, ...], ...]
    origins: tuple[str, ...]
    uncaptioned: int = 0

    def __post_init__(self) -> None:
        if not len(self.images) == len(self.captions) == len(self.origins):
            raise ValueError("images, captions and origins must have one entry per image")
        if not all(self.captions):
            raise ValueError("every image needs at least one caption")

    @property
    def texts(self) -> list[str]:
        """Every caption, image by image, in order: (n_texts,)."""
        return [text for group in self.captions for text in group]

    @property
    def text_image_index(self) -> np.ndarray:
        """int64 (n_texts,): for each entry of `texts`, the row in `images` of its image."""
        counts = [len(group) for group in self.captions]
        return np.repeat(np.arange(len(self.images), dtype=np.int64), counts)

    def __len__(self) -> int:
        return len(self.images)


def load_dataset(
    spec: str,
    *,
    split: str = "test",
    images_dir: Path | None = None,
    cache_dir: Path | None = None,
) -> CaptionedDataset:
    """Load one split of a captioned dataset.

    spec: "synthetic" or "synthetic:N" (N images per split, generated into cache_dir on first
    use), a Karpathy-split .json file, a COCO caption file (captions_val2017.json: one split,
    so `split` does not apply), or a .csv/.tsv file with image and caption columns.
    images_dir: where a file's image paths start (default: for Karpathy JSON, an `images` folder
    beside it if there is one, else its folder; for COCO, a folder named after its split, as
    val2017/, beside it or beside its annotations/ folder; for CSV/TSV, its folder).
    cache_dir: synthetic only (default $RETRIEVAL_CACHE, else ~/.cache/retrieval).
    Raises DatasetError with a one-line message naming the file and line.
    """
    if spec == "synthetic" or spec.startswith("synthetic:"):
        return _load_synthetic(spec, split, cache_dir)
    path = Path(spec).expanduser()
    suffix = path.suffix.lower()
    if suffix not in (".json", ".csv", ".tsv"):
        raise DatasetError(
            f"unknown dataset {spec!r}: expected 'synthetic', 'synthetic:N', a Karpathy-split or "
            "COCO caption .json file, or a .csv/.tsv file of image and caption columns"
        )
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "file not found"
        raise DatasetError(f"{path}: {what}")
    images_base = Path(images_dir).expanduser() if images_dir is not None else None
    if suffix == ".json":
        return _load_karpathy(path, split, images_base)
    return _load_table(path, split, images_base, delimiter="\t" if suffix == ".tsv" else ",")


# Karpathy-split JSON ------------------------------------------------------------------------


def _load_karpathy(path: Path, split: str, images_dir: Path | None) -> CaptionedDataset:
    label = path.name
    try:
        with path.open(encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{label} line {e.lineno}: not valid JSON ({e.msg})") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{label}: cannot read ({reason(e)})") from e
    if is_coco_captions(data):
        return _load_coco(path, data, images_dir)
    entries = data.get("images") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise DatasetError(f'{label}: no "images" list at the top level')

    names: list[str] = []
    captions: list[tuple[str, ...]] = []
    origins: list[str] = []
    present: set[str] = set()
    for number, entry in enumerate(entries):
        origin = f"{label} image {number}"
        image, entry_split, texts = _karpathy_entry(entry, origin)
        present.add(entry_split)
        if entry_split == split:
            names.append(image)
            captions.append(texts)
            origins.append(origin)
    if not names:
        raise DatasetError(_no_split_message(label, split, present))

    if images_dir is None:
        beside = path.parent / "images"
        images_dir = beside if beside.is_dir() else path.parent
    base = Path(os.path.abspath(images_dir))
    dataset = _assemble(f"{label}/{split}", base, names, captions, origins)
    _check_images_exist(dataset, names, origins, where=f" in {base}")
    return dataset


def _karpathy_entry(entry: object, origin: str) -> tuple[str, str, tuple[str, ...]]:
    """(image path relative to the images folder, split with restval as train, captions)."""
    if not isinstance(entry, dict):
        raise DatasetError(f"{origin}: expected an object, found {type(entry).__name__}")
    filename = entry.get("filename")
    if not isinstance(filename, str) or not filename.strip():
        raise DatasetError(f'{origin}: no "filename"')
    sentences = entry.get("sentences")
    if not isinstance(sentences, list) or not sentences:
        raise DatasetError(f'{origin}: no "sentences"')
    entry_split = entry.get("split")
    if not isinstance(entry_split, str):
        raise DatasetError(f'{origin}: no "split"')
    texts = []
    for number, sentence in enumerate(sentences):
        raw = sentence.get("raw") if isinstance(sentence, dict) else None
        if not isinstance(raw, str) or not raw.strip():
            raise DatasetError(f'{origin}: sentence {number} has no "raw" text')
        texts.append(raw.strip())
    filepath = entry.get("filepath")
    image = f"{filepath}/{filename}" if isinstance(filepath, str) and filepath else filename
    # COCO's "restval" images are the extra training images of Karpathy's split.
    return image, "train" if entry_split == "restval" else entry_split, tuple(texts)


def _load_coco(path: Path, data: dict[str, Any], images_dir: Path | None) -> CaptionedDataset:
    try:
        coco = read_coco_captions(data, path.name)
    except CocoFormatError as e:
        raise DatasetError(str(e)) from e
    base = Path(os.path.abspath(images_dir if images_dir is not None else default_images_dir(path)))
    dataset = _assemble(path.name, base, coco.images, coco.captions, coco.origins)
    dataset = dataclasses.replace(dataset, uncaptioned=coco.uncaptioned)
    _check_images_exist(dataset, coco.images, coco.origins, where=f" in {base}")
    return dataset


# CSV / TSV -----------------------------------------------------------------------------------

_IMAGE_COLUMNS = ("image", "filepath", "path")
_CAPTION_COLUMNS = ("caption", "text", "title")


def _load_table(
    path: Path, split: str, images_dir: Path | None, *, delimiter: str
) -> CaptionedDataset:
    label = path.name
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            # TSV files (Conceptual Captions and the like) carry quotes as plain text.
            quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
            reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
            rows = _numbered_rows(reader)
            header_line, header = next(rows, (1, []))
            image_col, caption_col, split_col = _columns(label, header)
            grouped: dict[str, tuple[str, list[str], str]] = {}
            present: set[str] = set()
            for line, row in rows:
                image, caption, row_split = (
                    _cell(row, col) for col in (image_col, caption_col, split_col)
                )
                if not image:
                    raise DatasetError(f"{label} line {line}: empty image")
                if not caption:
                    raise DatasetError(f"{label} line {line}: empty caption")
                if split_col is not None:
                    row_split = "train" if row_split == "restval" else row_split
                    present.add(row_split)
                    if row_split != split:
                        continue
                first = grouped.setdefault(image, (image, [], f"{label} line {line}"))
                first[1].append(caption)
    except csv.Error as e:
        raise DatasetError(f"{label} line {reader.line_num}: malformed row ({e})") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{label}: cannot read ({reason(e)})") from e

    if not grouped:
        if split_col is not None:
            raise DatasetError(_no_split_message(label, split, present))
        raise DatasetError(f"{label}: no rows below the header (line {header_line})")
    names = [image for image, _, _ in grouped.values()]
    captions = [tuple(texts) for _, texts, _ in grouped.values()]
    origins = [origin for _, _, origin in grouped.values()]
    base = Path(os.path.abspath(images_dir if images_dir is not None else path.parent))
    name = f"{label}/{split}" if split_col is not None else label
    dataset = _assemble(name, base, names, captions, origins)
    _check_images_exist(dataset, names, origins)
    return dataset


def _numbered_rows(reader: Any) -> Iterator[tuple[int, list[str]]]:
    """Non-blank rows with the file line each starts on (a quoted field may span lines)."""
    line = 1
    for row in reader:
        start, line = line, reader.line_num + 1
        if any(cell.strip() for cell in row):
            yield start, row


def _columns(label: str, header: Sequence[str]) -> tuple[int, int, int | None]:
    """Indices of the image, caption and (optional) split columns of a header row."""
    names = [cell.strip().lower() for cell in header]

    def find(candidates: Sequence[str]) -> int | None:
        return next((names.index(c) for c in candidates if c in names), None)

    image_col, caption_col = find(_IMAGE_COLUMNS), find(_CAPTION_COLUMNS)
    if image_col is None or caption_col is None:
        has = ", ".join(cell.strip() for cell in header if cell.strip()) or "none"
        raise DatasetError(
            f"{label}: needs an image column ({', '.join(_IMAGE_COLUMNS)}) and a caption column "
            f"({', '.join(_CAPTION_COLUMNS)}) in its header row; its columns: {has}"
        )
    return image_col, caption_col, find(("split",))


def _cell(row: Sequence[str], col: int | None) -> str:
    return row[col].strip() if col is not None and col < len(row) else ""


# Shared --------------------------------------------------------------------------------------


def _assemble(
    name: str,
    base: Path,
    names: Sequence[str],
    captions: Sequence[tuple[str, ...]],
    origins: Sequence[str],
) -> CaptionedDataset:
    """Make image paths relative to one root, merging entries that name the same file.

    The root is `base` unless a path leaves it (absolute, or with '..'); then it is the deepest
    folder that holds every image.
    """
    absolute = [os.path.normpath(os.path.join(base, image)) for image in names]
    root = str(base)
    if any(os.path.commonpath([root, a]) != root for a in absolute):
        root = os.path.commonpath([os.path.dirname(a) for a in absolute])
    merged: dict[str, tuple[list[str], str]] = {}
    for path, texts, origin in zip(absolute, captions, origins, strict=True):
        relative = Path(os.path.relpath(path, root)).as_posix()
        merged.setdefault(relative, ([], origin))[0].extend(texts)
    return CaptionedDataset(
        name=name,
        root=Path(root),
        images=tuple(merged),
        captions=tuple(tuple(texts) for texts, _ in merged.values()),
        origins=tuple(origin for _, origin in merged.values()),
    )


def _check_images_exist(
    dataset: CaptionedDataset, names: Sequence[str], origins: Sequence[str], where: str = ""
) -> None:
    """Raise for the first missing image, as written in the file, with how many more are."""
    declared = dict(zip(origins, names, strict=True))
    missing = [i for i, image in enumerate(dataset.images) if not (dataset.root / image).is_file()]
    if missing:
        origin = dataset.origins[missing[0]]
        more = f" ({len(missing) - 1} more images missing)" if len(missing) > 1 else ""
        raise DatasetError(f"{origin}: image {declared[origin]} not found{where}{more}")


def _no_split_message(label: str, split: str, present: Iterable[str]) -> str:
    splits = ", ".join(sorted(present)) or "none"
    return f"{label}: no images in split {split!r}; splits present: {splits}"


def _load_synthetic(spec: str, split: str, cache_dir: Path | None) -> CaptionedDataset:
    drawn = synthetic_split(spec, split, cache_dir)
    dataset = CaptionedDataset(
        name=drawn.name,
        root=drawn.folder,
        images=drawn.images,
        captions=drawn.captions,
        origins=tuple(f"{drawn.name} image {i}" for i in range(len(drawn.images))),
    )
    _check_images_exist(dataset, drawn.images, dataset.origins, where=f" in {drawn.folder}")
    return dataset
