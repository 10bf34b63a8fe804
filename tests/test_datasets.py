"""Captioned datasets: Karpathy JSON, CSV/TSV, the synthetic set, and a clear error for each fault.

Expectations are written by hand: files the tests write, and for the synthetic set, what the
pixels themselves show (colours, where the shape is, how big, what outline).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.errors import RetrievalError
from retrieval.eval import synthetic
from retrieval.eval.datasets import CaptionedDataset, load_dataset
from retrieval.eval.errors import DatasetError


def _write_images(root: Path, *names: str) -> None:
    for number, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 6), (number * 20 % 256, 40, 90)).save(path)


def _entry(filename: str, split: str, *captions: str, filepath: str | None = None) -> dict:
    entry = {
        "filename": filename,
        "split": split,
        "sentences": [{"raw": c, "tokens": c.strip().split()} for c in captions],
    }
    if filepath is not None:
        entry["filepath"] = filepath
    return entry


def _write_karpathy(path: Path, entries: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": entries, "dataset": "flickr30k"}, indent=1))
    return path


def _message(excinfo: pytest.ExceptionInfo[DatasetError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# Karpathy JSON -------------------------------------------------------------------------------


@pytest.fixture
def flickr(tmp_path: Path) -> Path:
    """A Flickr30k-like file: images in an `images/` folder beside it, every split present."""
    entries = [
        _entry("1.jpg", "train", "a dog runs", "a brown dog"),
        _entry("2.jpg", "test", "  a cat sleeps  ", "a cat on a sofa", "a grey cat"),
        _entry("3.jpg", "val", "a bird"),
        _entry("4.jpg", "test", "a boat at sea"),
        _entry("5.jpg", "restval", "a red car"),
    ]
    _write_images(tmp_path / "images", "1.jpg", "2.jpg", "3.jpg", "4.jpg", "5.jpg")
    return _write_karpathy(tmp_path / "dataset_flickr30k.json", entries)


def test_karpathy_keeps_the_requested_split_in_file_order_with_stripped_captions(flickr: Path):
    dataset = load_dataset(str(flickr), split="test")

    assert dataset.name == "dataset_flickr30k.json/test"
    assert dataset.root == flickr.parent / "images"
    assert dataset.images == ("2.jpg", "4.jpg")
    assert dataset.captions == (
        ("a cat sleeps", "a cat on a sofa", "a grey cat"),
        ("a boat at sea",),
    )
    assert dataset.origins == ("dataset_flickr30k.json image 1", "dataset_flickr30k.json image 3")
    assert len(dataset) == 2


def test_karpathy_counts_restval_as_train(flickr: Path):
    dataset = load_dataset(str(flickr), split="train")

    assert dataset.images == ("1.jpg", "5.jpg")
    assert dataset.captions == (("a dog runs", "a brown dog"), ("a red car",))


def test_karpathy_filepath_is_a_subfolder_of_the_images_folder(tmp_path: Path):
    entries = [
        _entry("COCO_val2014_1.jpg", "test", "a plate of food", filepath="val2014"),
        _entry("COCO_train2014_2.jpg", "test", "a tennis player", filepath="train2014"),
    ]
    _write_images(
        tmp_path / "images", "val2014/COCO_val2014_1.jpg", "train2014/COCO_train2014_2.jpg"
    )
    path = _write_karpathy(tmp_path / "dataset_coco.json", entries)

    dataset = load_dataset(str(path))

    assert dataset.images == ("val2014/COCO_val2014_1.jpg", "train2014/COCO_train2014_2.jpg")
    assert all((dataset.root / image).is_file() for image in dataset.images)


def test_karpathy_images_dir_overrides_the_images_folder_beside_the_file(flickr: Path, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    _write_images(elsewhere, "2.jpg", "4.jpg")

    dataset = load_dataset(str(flickr), images_dir=elsewhere)

    assert dataset.root == elsewhere
    assert dataset.images == ("2.jpg", "4.jpg")


def test_karpathy_without_an_images_folder_uses_the_files_own_folder(tmp_path: Path):
    _write_images(tmp_path / "data", "a.png")
    path = _write_karpathy(tmp_path / "data" / "captions.json", [_entry("a.png", "test", "x")])

    dataset = load_dataset(str(path))

    assert dataset.root == tmp_path / "data"
    assert dataset.images == ("a.png",)


def test_text_image_index_follows_the_captions_layout(flickr: Path):
    dataset = load_dataset(str(flickr), split="test")

    assert dataset.texts == ["a cat sleeps", "a cat on a sofa", "a grey cat", "a boat at sea"]
    index = dataset.text_image_index
    assert index.dtype == np.int64
    assert index.tolist() == [0, 0, 0, 1]


def test_text_image_index_of_a_hand_built_dataset():
    dataset = CaptionedDataset(
        name="hand",
        root=Path("/nowhere"),
        images=("a.jpg", "b.jpg", "c.jpg"),
        captions=(("a1", "a2"), ("b1",), ("c1", "c2", "c3")),
        origins=("hand 0", "hand 1", "hand 2"),
    )

    assert dataset.texts == ["a1", "a2", "b1", "c1", "c2", "c3"]
    assert dataset.text_image_index.tolist() == [0, 0, 1, 2, 2, 2]
    assert len(dataset) == 3


# CSV and TSV ---------------------------------------------------------------------------------


def test_csv_groups_rows_under_each_images_first_appearance(tmp_path: Path, monkeypatch):
    folder = tmp_path / "set"
    _write_images(folder / "photos", "b.jpg", "a.jpg", "c.jpg")
    (folder / "pairs.csv").write_text(
        "Image,Caption\n"
        "photos/b.jpg,a bee\n"
        'photos/a.jpg,"an apple, red"\n'
        "photos/b.jpg,  a bee on a flower  \n"
        "\n"
        "photos/c.jpg,a cherry\n"
        "photos/a.jpg,fruit\n"
    )
    monkeypatch.chdir(tmp_path)  # paths are relative to the file, not to the working folder

    dataset = load_dataset(str(folder / "pairs.csv"), split="anything")

    assert dataset.name == "pairs.csv"
    assert dataset.root == folder
    assert dataset.images == ("photos/b.jpg", "photos/a.jpg", "photos/c.jpg")
    assert dataset.captions == (
        ("a bee", "a bee on a flower"),
        ("an apple, red", "fruit"),
        ("a cherry",),
    )
    assert dataset.origins == ("pairs.csv line 2", "pairs.csv line 3", "pairs.csv line 6")
    assert dataset.text_image_index.tolist() == [0, 0, 1, 1, 2]


def test_tsv_is_tab_separated_with_quotes_kept_and_column_aliases(tmp_path: Path):
    _write_images(tmp_path, "x.png", "y.png")
    (tmp_path / "pairs.tsv").write_text(
        'title\tsource\tFilePath\na "quoted" word\tweb\tx.png\nwhy, commas\tweb\ty.png\n'
    )

    dataset = load_dataset(str(tmp_path / "pairs.tsv"))

    assert dataset.images == ("x.png", "y.png")
    assert dataset.captions == (('a "quoted" word',), ("why, commas",))


def test_csv_split_column_keeps_only_that_splits_rows(tmp_path: Path):
    _write_images(tmp_path, "a.jpg", "b.jpg", "c.jpg")
    (tmp_path / "pairs.csv").write_text(
        "path,text,split\na.jpg,one,train\nb.jpg,two,test\nc.jpg,three,val\nb.jpg,four,test\n"
    )

    test = load_dataset(str(tmp_path / "pairs.csv"), split="test")
    val = load_dataset(str(tmp_path / "pairs.csv"), split="val")

    assert test.name == "pairs.csv/test"
    assert (test.images, test.captions) == (("b.jpg",), (("two", "four"),))
    assert (val.images, val.captions) == (("c.jpg",), (("three",),))


def test_csv_accepts_absolute_image_paths_and_roots_above_them(tmp_path: Path):
    _write_images(tmp_path / "pictures", "far.jpg")
    _write_images(tmp_path / "lists" / "near", "near.jpg")
    far = tmp_path / "pictures" / "far.jpg"
    (tmp_path / "lists" / "pairs.csv").write_text(f"image,caption\nnear/near.jpg,near\n{far},far\n")

    dataset = load_dataset(str(tmp_path / "lists" / "pairs.csv"))

    assert dataset.root == tmp_path
    assert dataset.images == ("lists/near/near.jpg", "pictures/far.jpg")


def test_csv_images_dir_is_where_relative_paths_start(tmp_path: Path):
    _write_images(tmp_path / "img", "a.jpg")
    (tmp_path / "pairs.csv").write_text("image,caption\na.jpg,an a\n")

    dataset = load_dataset(str(tmp_path / "pairs.csv"), images_dir=tmp_path / "img")

    assert (dataset.root, dataset.images) == (tmp_path / "img", ("a.jpg",))


# Errors --------------------------------------------------------------------------------------


def test_dataset_error_is_a_retrieval_error():
    assert issubclass(DatasetError, RetrievalError)


@pytest.mark.parametrize("name", ["missing.json", "missing.csv", "missing.tsv"])
def test_missing_file_is_named(tmp_path: Path, name: str):
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(str(tmp_path / name))
    assert _message(excinfo) == f"{tmp_path / name}: file not found"


def test_invalid_json_names_the_line(tmp_path: Path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "images": [\n    {"filename": "a.jpg",,}\n  ]\n}\n')

    with pytest.raises(DatasetError) as excinfo:
        load_dataset(str(path))
    message = _message(excinfo)
    assert message.startswith("broken.json line 3: not valid JSON")


@pytest.mark.parametrize("content", ['{"annotations": []}', "[]", '{"images": {"a": 1}}'])
def test_json_without_an_images_list_is_refused(tmp_path: Path, content: str):
    (tmp_path / "d.json").write_text(content)

    with pytest.raises(DatasetError) as excinfo:
        load_dataset(str(tmp_path / "d.json"))
    assert _message(excinfo) == 'd.json: no "images" list at the top level'


@pytest.mark.parametrize(
    ("bad", "complaint"),
    [
        ({"split": "test", "sentences": [{"raw": "x"}]}, 'no "filename"'),
        ({"filename": "b.jpg", "split": "test"}, 'no "sentences"'),
        ({"filename": "b.jpg", "split": "test", "sentences": []}, 'no "sentences"'),
        ({"filename": "b.jpg", "sentences": [{"raw": "x"}]}, 'no "split"'),
        (
            {"filename": "b.jpg", "split": "test", "sentences": [{"raw": "x"}, {"raw": " "}]},
            'sentence 1 has no "raw" text',
        ),
    ],
)
def test_json_entry_without_a_field_names_the_entry(tmp_path: Path, bad: dict, complaint: str):
    _write_images(tmp_path, "a.jpg", "b.jpg")
    path = _write_karpathy(tmp_path / "d.json", [_entry("a.jpg", "test", "fine"), bad])

    with pytest.raises(DatasetError) as excinfo:
        load_dataset(str(path))
    assert _message(excinfo) == f"d.json image 1: {complaint}"


def test_json_missing_image_names_the_entry_and_the_folder(flickr: Path):
    (flickr.parent / "images" / "4.jpg").unlink()

    with pytest.raises(DatasetError) as excinfo:
        load_dataset(str(flickr))
    assert _message(excinfo) == (
        f"dataset_flickr30k.json image 3: image 4.jpg not found in {flickr.parent / 'images'}"
    )


def test_json_split_without_images_lists_the_splits_present(flickr: Path):
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(str(flickr), split="tset")
    assert _message(excinfo) == (
        "dataset_flickr30k.json: no images in split 'tset'; splits present: test, train, val"
    )


def test_csv_without_the_columns_names_the_columns_it_has(tmp_path: Path):
    (tmp_path / "pairs.csv").write_text("file,label\na.jpg,x\n")

    with pytest.raises(DatasetError) as excinfo:
        load_dataset(str(tmp_path / "pairs.csv"))
    message = _message(excinfo)
    assert message.startswith("pairs.csv: needs an image column")
    assert message.endswith("its columns: file, label")


@pytest.mark.parametrize(
    ("row", "complaint"),
    [("a.jpg,", "empty caption"), ("a.jpg,   ", "empty caption"), (",a caption", "empty image")],
)
def test_csv_row_with_an_empty_field_names_the_line(tmp_path: Path, row: str, complaint: str):
    _write_images(tmp_path, "a.jpg")
    (tmp_path / "pairs.csv").write_text(f"image,caption\na.jpg,fine\n\n{row}\n")

    with pytest.raises(DatasetError) as excinfo:
        load_dataset(str(tmp_path / "pairs.csv"))
    assert _message(excinfo) == f"pairs.csv line 4: {complaint}"


def test_csv_missing_image_names_the_line_and_the_path_as_written(tmp_path: Path):
    _write_images(tmp_path / "photos", "a.jpg")
    (tmp_path / "pairs.csv").write_text(
        "image,caption\nphotos/a.jpg,one\nphotos/a.jpg,two\nphotos/x.jpg,three\nphotos/a.jpg,4\n"
    )

    with pytest.raises(DatasetError) as excinfo:
        load_dataset(str(tmp_path / "pairs.csv"))
    assert _message(excinfo) == "pairs.csv line 4: image photos/x.jpg not found"


def test_csv_split_without_rows_lists_the_splits_present(tmp_path: Path):
    _write_images(tmp_path, "a.jpg")
    (tmp_path / "pairs.csv").write_text("image,caption,split\na.jpg,x,train\na.jpg,y,val\n")

    with pytest.raises(DatasetError) as excinfo:
        load_dataset(str(tmp_path / "pairs.csv"), split="test")
    assert _message(excinfo) == "pairs.csv: no images in split 'test'; splits present: train, val"


@pytest.mark.parametrize("spec", ["flickr30k", "notes.txt", "~/nowhere/at/all"])
def test_unknown_spec_says_what_is_accepted(spec: str):
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(spec)
    message = _message(excinfo)
    assert message.startswith(f"unknown dataset {spec!r}")
    assert "synthetic:N" in message and ".json" in message and ".csv/.tsv" in message


@pytest.mark.parametrize(
    ("spec", "split", "complaint"),
    [
        ("synthetic:10", "training", "synthetic:10: no split 'training'; splits: train, val, test"),
        ("synthetic:0", "test", "synthetic:0: expected synthetic:N with N a positive whole number"),
        ("synthetic:ten", "test", "synthetic:ten: expected synthetic:N"),
        ("synthetic:2353", "test", "synthetic:2353: at most 2352 images per split fit"),
    ],
)
def test_bad_synthetic_requests_are_refused(tmp_path: Path, spec: str, split: str, complaint: str):
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(spec, split=split, cache_dir=tmp_path)
    assert _message(excinfo).startswith(complaint)
    assert not (tmp_path / "synthetic").exists()


# Synthetic -----------------------------------------------------------------------------------

# What a caption can say, written out here rather than taken from the module.
SHAPE_WORDS = {"circle", "square", "triangle", "diamond", "star", "cross", "ring"}
COLOUR_PROTOTYPES = {
    "red": (255, 0, 0),
    "green": (0, 160, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "purple": (128, 0, 128),
    "orange": (255, 140, 0),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}


def _parse_caption(caption: str) -> tuple[str, str, str, tuple[int, int], str]:
    """(shape, shape colour, background colour, (column, row) in a 3x3 grid, size)."""
    words = re.findall(r"[a-z]+", caption)
    shapes = [w for w in words if w in SHAPE_WORDS]
    colours = [w for w in words if w in COLOUR_PROTOTYPES]
    sizes = [w for w in words if w in ("big", "small")]
    assert len(shapes) == 1 and len(colours) == 2 and len(sizes) == 1, caption
    # The shape's colour is the word right before the shape's name; the other is the background.
    colour = words[words.index(shapes[0]) - 1]
    assert colour in colours, caption
    backgrounds = [c for c in colours if c != colour]
    assert len(backgrounds) == 1, caption
    columns = {"left": 0, "right": 2}
    rows = {"top": 0, "bottom": 2}
    column = [columns[w] for w in words if w in columns]
    row = [rows[w] for w in words if w in rows]
    assert len(column) <= 1 and len(row) <= 1, caption
    if not column and not row:
        assert "centre" in words, caption
    return shapes[0], colour, backgrounds[0], (*(column or [1]), *(row or [1])), sizes[0]


def _nearest_colour(rgb: np.ndarray) -> str:
    return min(
        COLOUR_PROTOTYPES,
        key=lambda name: float(np.sum((rgb.astype(float) - COLOUR_PROTOTYPES[name]) ** 2)),
    )


def _runs(row: np.ndarray) -> int:
    return int(row[0]) + int(np.sum(row[1:] & ~row[:-1]))


def _classify_outline(mask: np.ndarray) -> str:
    """Name a shape from its mask cropped to its bounding box, by plain geometry: a ring is
    hollow, a square fills its box, a disc fills pi/4 of it, a triangle has a full-width base,
    a star ends in two feet, a cross has arms a third as wide as the box, a diamond is pointed
    at top and bottom and full across the middle."""
    height, width = mask.shape
    fill = mask.mean()
    top, bottom = mask[0].sum() / width, mask[-1].sum() / width
    if not mask[height // 2, width // 2]:
        return "ring"
    if fill > 0.95:
        return "square"
    if 0.7 < fill < 0.85:
        return "circle"
    if bottom > 0.8 and top < 0.2:
        return "triangle"
    if _runs(mask[-1]) == 2:
        return "star"
    if 0.2 < top < 0.5 and mask[height // 2].all() and mask[:, width // 2].all():
        return "cross"
    if top < 0.2 and bottom < 0.2 and mask[height // 2].all():
        return "diamond"
    return "unknown"


def _what_is_drawn(path: Path) -> tuple[str, str, str, tuple[int, int], str]:
    """The attributes of a synthetic picture, read from its pixels."""
    pixels = np.asarray(Image.open(path))
    assert pixels.shape == (128, 128, 3)
    packed = pixels.reshape(-1, 3).astype(np.int64) @ np.array([1 << 16, 1 << 8, 1])
    values, counts = np.unique(packed, return_counts=True)
    assert len(values) == 2, f"{path.name}: expected two colours, found {len(values)}"
    colours = (values[np.argsort(-counts)][:, None] >> np.array([16, 8, 0])) & 255
    background, shape_colour = colours
    mask = np.all(pixels == shape_colour, axis=-1)
    ys, xs = np.nonzero(mask)
    box = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    centre_x, centre_y = (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2
    cell = (int(centre_x * 3 // 128), int(centre_y * 3 // 128))
    extent = max(box.shape)
    assert extent >= 34 or extent <= 26, f"{path.name}: neither big nor small ({extent} px)"
    return (
        _classify_outline(box),
        _nearest_colour(shape_colour),
        _nearest_colour(background),
        cell,
        "big" if extent >= 34 else "small",
    )


def _file_bytes(dataset: CaptionedDataset) -> list[bytes]:
    return [(dataset.root / image).read_bytes() for image in dataset.images]


def test_synthetic_names_roots_and_origins(tmp_path: Path):
    dataset = load_dataset("synthetic:12", split="val", cache_dir=tmp_path)

    assert dataset.name == "synthetic:12/val"
    assert dataset.root == tmp_path / "synthetic" / "v1-N12" / "val"
    assert dataset.images == tuple(f"{i:05d}.png" for i in range(12))
    assert dataset.origins[7] == "synthetic:12/val image 7"
    assert sorted(p.name for p in dataset.root.iterdir()) == list(dataset.images)
    assert all(3 <= len(group) <= 5 for group in dataset.captions)


def test_synthetic_captions_describe_the_drawn_pixels(tmp_path: Path):
    dataset = load_dataset("synthetic:150", split="test", cache_dir=tmp_path)

    seen_shapes, seen_colours = set(), set()
    for image, captions in zip(dataset.images, dataset.captions, strict=True):
        said = {_parse_caption(caption) for caption in captions}
        assert len(said) == 1, f"{image}: captions disagree: {captions}"
        assert said == {_what_is_drawn(dataset.root / image)}, f"{image}: {captions[0]}"
        shape, colour, background, _, _ = said.pop()
        seen_shapes.add(shape)
        seen_colours |= {colour, background}
    assert seen_shapes == SHAPE_WORDS
    assert seen_colours == set(COLOUR_PROTOTYPES)


def test_synthetic_captions_are_paraphrases(tmp_path: Path):
    dataset = load_dataset("synthetic:20", cache_dir=tmp_path)

    for captions in dataset.captions:
        assert len(set(captions)) == len(captions)
    assert len({caption.split()[0] for caption in dataset.texts}) >= 4  # not one sentence frame


def test_synthetic_is_deterministic_across_cache_folders(tmp_path: Path):
    for split in ("test", "train"):
        first = load_dataset("synthetic:40", split=split, cache_dir=tmp_path / "one")
        second = load_dataset("synthetic:40", split=split, cache_dir=tmp_path / "two")

        assert first.captions == second.captions
        assert first.images == second.images
        assert _file_bytes(first) == _file_bytes(second)


def test_synthetic_splits_are_disjoint_without_duplicates(tmp_path: Path):
    combinations = {}
    for split in ("train", "val", "test"):
        dataset = load_dataset("synthetic:300", split=split, cache_dir=tmp_path)
        said = [_parse_caption(group[0]) for group in dataset.captions]
        assert len(set(said)) == 300, f"{split} repeats a combination"
        combinations[split] = set(said)

    assert not combinations["train"] & combinations["val"]
    assert not combinations["train"] & combinations["test"]
    assert not combinations["val"] & combinations["test"]


def test_synthetic_smaller_test_split_stays_disjoint_from_a_larger_train_split(tmp_path: Path):
    train = load_dataset("synthetic:200", split="train", cache_dir=tmp_path)
    test = load_dataset("synthetic:100", split="test", cache_dir=tmp_path)

    train_said = {_parse_caption(group[0]) for group in train.captions}
    assert not train_said & {_parse_caption(group[0]) for group in test.captions}


def test_synthetic_second_load_does_not_regenerate(tmp_path: Path):
    first = load_dataset("synthetic:30", split="train", cache_dir=tmp_path)
    stamps = {p.name: p.stat().st_mtime_ns for p in [first.root, *first.root.iterdir()]}

    second = load_dataset("synthetic:30", split="train", cache_dir=tmp_path)

    assert {p.name: p.stat().st_mtime_ns for p in [second.root, *second.root.iterdir()]} == stamps
    assert second == first


def test_synthetic_generation_leaves_no_temporary_folder(tmp_path: Path):
    load_dataset("synthetic:5", split="test", cache_dir=tmp_path)
    load_dataset("synthetic:5", split="val", cache_dir=tmp_path)

    assert sorted(os.listdir(tmp_path / "synthetic" / "v1-N5")) == ["test", "val"]


def test_synthetic_keeps_the_split_of_a_process_that_won_the_race(tmp_path: Path, monkeypatch):
    real_rename = os.rename

    def rival_first(source: str, destination: str) -> None:
        # Another process finishes the same split just before this one renames its own.
        Path(destination).mkdir()
        for picture in Path(source).iterdir():
            (Path(destination) / picture.name).write_bytes(picture.read_bytes())
        (Path(destination) / "rival").write_text("")
        real_rename(source, destination)

    monkeypatch.setattr(synthetic.os, "rename", rival_first)
    dataset = load_dataset("synthetic:4", split="test", cache_dir=tmp_path)

    assert (dataset.root / "rival").exists()
    assert sorted(os.listdir(dataset.root.parent)) == ["test"]


def test_synthetic_reports_a_missing_picture_in_the_cache(tmp_path: Path):
    dataset = load_dataset("synthetic:6", split="test", cache_dir=tmp_path)
    (dataset.root / "00004.png").unlink()

    with pytest.raises(DatasetError) as excinfo:
        load_dataset("synthetic:6", split="test", cache_dir=tmp_path)
    assert _message(excinfo).startswith(
        f"synthetic:6/test image 4: image 00004.png not found in {dataset.root}"
    )


def test_synthetic_default_cache_is_retrieval_cache(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("RETRIEVAL_CACHE", str(tmp_path / "cache"))

    dataset = load_dataset("synthetic:3")

    assert dataset.root == tmp_path / "cache" / "synthetic" / "v1-N3" / "test"


def test_synthetic_without_a_size_has_500_images_per_split(tmp_path: Path):
    dataset = load_dataset("synthetic", split="val", cache_dir=tmp_path)

    assert dataset.name == "synthetic:500/val"
    assert len(dataset) == 500
    assert len(dataset.texts) == dataset.text_image_index.shape[0]
    for row, text in zip(dataset.text_image_index, dataset.texts, strict=True):
        assert text in dataset.captions[row]
