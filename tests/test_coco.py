"""COCO's own caption files (`images` + `annotations`), hand-written, with images the test writes,
read by `load_dataset`, `bench` and `train` as CLIP_benchmark's mscoco_captions reads them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_photos
from reference import naive_recall

from retrieval.eval.bench import run_benchmark
from retrieval.eval.datasets import DatasetError, load_dataset

RETRIEVAL = Path(sys.executable).parent / "retrieval"

# Ids out of file order, captions of one image scattered, one image (id 40) with no caption.
IMAGES = [
    {"id": 30, "file_name": "000030.jpg", "width": 96, "height": 72},
    {"id": 10, "file_name": "000010.jpg", "width": 96, "height": 72},
    {"id": 40, "file_name": "000040.jpg", "width": 96, "height": 72},
    {"id": 20, "file_name": "000020.jpg", "width": 96, "height": 72},
]
ANNOTATIONS = [
    {"id": 1, "image_id": 20, "caption": "A dog on a beach. "},
    {"id": 2, "image_id": 10, "caption": "A red bus in the street."},
    {"id": 3, "image_id": 30, "caption": "Two cats asleep on a sofa."},
    {"id": 4, "image_id": 10, "caption": "A bus parked by the kerb\n"},
    {"id": 5, "image_id": 20, "caption": "A brown dog running in the sand."},
]


def write_coco(
    folder: Path, images: list | None = None, annotations: list | None = None, **extra: object
) -> Path:
    """COCO's layout: annotations/captions_val2017.json beside the val2017/ photos."""
    images = IMAGES if images is None else images
    write_photos(folder / "val2017", [entry["file_name"] for entry in IMAGES])
    path = folder / "annotations" / "captions_val2017.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {"info": {}, "licenses": [], "images": images, **extra}
    content["annotations"] = ANNOTATIONS if annotations is None else annotations
    path.write_text(json.dumps(content))
    return path


def test_coco_captions_go_to_their_images_in_id_order_and_the_uncaptioned_are_counted(
    tmp_path: Path,
):
    path = write_coco(tmp_path)
    dataset = load_dataset(str(path))
    assert dataset.root == tmp_path / "val2017"  # found beside annotations/, as COCO ships
    assert dataset.images == ("000010.jpg", "000020.jpg", "000030.jpg")
    assert dataset.captions == (
        ("A red bus in the street.", "A bus parked by the kerb"),
        ("A dog on a beach.", "A brown dog running in the sand."),
        ("Two cats asleep on a sofa.",),
    )
    assert dataset.origins == (
        "captions_val2017.json images[1]",
        "captions_val2017.json images[3]",
        "captions_val2017.json images[0]",
    )
    assert dataset.uncaptioned == 1
    assert dataset.text_image_index.tolist() == [0, 0, 1, 1, 2]


def test_coco_format_is_told_by_its_keys_and_the_split_option_does_not_apply(tmp_path: Path):
    write_coco(tmp_path)
    renamed = tmp_path / "val2017" / "my captions.json"
    renamed.write_text((tmp_path / "annotations" / "captions_val2017.json").read_text())
    for split in ("test", "train"):
        dataset = load_dataset(str(renamed), split=split)
        assert dataset.root == tmp_path / "val2017"  # no split folder: the file's own
        assert dataset.images == ("000010.jpg", "000020.jpg", "000030.jpg")


def test_coco_images_dir_says_where_the_file_names_start(tmp_path: Path):
    path = write_coco(tmp_path)
    (tmp_path / "val2017").rename(tmp_path / "photos")
    dataset = load_dataset(str(path), images_dir=tmp_path / "photos")
    assert dataset.root == tmp_path / "photos"
    assert len(dataset) == 3


@pytest.mark.parametrize(
    ("images", "annotations", "complaint"),
    [
        (None, [*ANNOTATIONS, {"image_id": 42, "caption": "x"}],
         "captions_val2017.json: annotations[5]: image_id 42 is not in images"),
        (None, [{"image_id": 10}], 'captions_val2017.json: annotations[0]: no "caption" text'),
        (None, [{"image_id": 10, "caption": "  "}], "annotations[0]: no \"caption\" text"),
        (None, [{"image_id": "10", "caption": "a"}], 'annotations[0]: no integer "image_id"'),
        (None, ["a bus"], "annotations[0]: expected an object, found str"),
        (None, {"10": "a bus"}, 'captions_val2017.json: "annotations" is not a list'),
        ([{"id": 10}], [], 'captions_val2017.json: images[0]: no "file_name"'),
        ([{"file_name": "a.jpg"}], [], 'images[0]: no integer "id"'),
        ([*IMAGES, {"id": 10, "file_name": "b.jpg"}], ANNOTATIONS,
         "captions_val2017.json: images[4]: id 10 is also images[1]"),
        ("images", [], 'captions_val2017.json: "images" is not a list'),
        (None, [], "captions_val2017.json: none of its 4 images has a caption"),
    ],
)  # fmt: skip
def test_a_malformed_coco_file_names_the_file_and_the_entry(
    tmp_path: Path, images: list | None, annotations: list, complaint: str
):
    path = write_coco(tmp_path, images, annotations)
    with pytest.raises(DatasetError) as caught:
        load_dataset(str(path))
    assert complaint in str(caught.value)


def test_a_missing_coco_image_names_its_entry_and_the_folder(tmp_path: Path):
    path = write_coco(tmp_path)
    (tmp_path / "val2017" / "000020.jpg").unlink()
    with pytest.raises(DatasetError) as caught:
        load_dataset(str(path))
    assert str(caught.value) == (
        f"captions_val2017.json images[3]: image 000020.jpg not found in {tmp_path / 'val2017'}"
    )


def test_bench_on_a_coco_file_equals_the_naive_computation_and_reports_the_uncaptioned(
    tmp_path: Path, encoder
):
    dataset = load_dataset(str(write_coco(tmp_path)))
    out = tmp_path / "out"
    report = run_benchmark(dataset, encoder=encoder, ks=(1, 2), out=out, batch_size=2)
    assert (report.images, report.texts, report.uncaptioned_images) == (3, 5, 1)
    images, texts = np.load(out / "image_embeddings.npy"), np.load(out / "text_embeddings.npy")
    t2i, i2t = naive_recall(images, texts, np.array([0, 0, 1, 1, 2]), (1, 2))
    assert (report.text_to_image, report.image_to_text) == (t2i, i2t)
    assert report.to_json()["uncaptioned_images"] == 1


def test_bench_and_train_commands_read_a_coco_file(tmp_path: Path, tiny_model):
    path = write_coco(tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RETRIEVAL_CACHE": str(tmp_path / "cache")}
    bench = subprocess.run(
        [str(RETRIEVAL), "bench", str(path), "--images-dir", str(tmp_path / "val2017"),
         "--model", tiny_model.name, "--k", "1"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert bench.returncode == 0, bench.stderr
    assert "captions_val2017.json: 3 images, 5 captions" in bench.stdout
    assert "(1 images without a caption left out)" in bench.stdout

    bad = path.parent / "bad.json"
    bad.write_text(json.dumps({"images": IMAGES, "annotations": [{"image_id": 7, "caption": "a"}]}))
    train = subprocess.run(
        [str(RETRIEVAL), "train", str(bad), "--model", tiny_model.name,
         "--images-dir", str(tmp_path / "val2017"), "--steps", "1", "--out", str(tmp_path / "m")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert train.returncode == 1
    assert "Traceback" not in train.stderr
    assert "bad.json: annotations[0]: image_id 7 is not in images" in train.stderr
