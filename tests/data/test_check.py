"""``lora-sam check-data`` on a corrupt-data folder, and training skipping the same samples."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_fixtures import sa1b_annotation, shared_data, synth, write_shards
from lora_sam.cli import main
from lora_sam.data.annotations import Problem
from lora_sam.data.check import check_data
from lora_sam.data.loaders import get_loaders

# (file, field, part of the message, severity) expected for each damaged sample.
EXPECTED = [
    ("sa_2.json", "", "not valid JSON", "error"),
    ("sa_3.json", "annotations", "missing or not a list", "error"),
    ("sa_4.json", "annotation 2", "RLE size (128, 96) does not match image 128x96", "error"),
    ("sa_5.jpg", "", "image file not found", "error"),
    ("sa_6.jpg", "", "not a readable image", "error"),
    ("sa_7.json", "annotations", "empty", "error"),
    ("sa_8.jpg", "mode", "L image, converted to RGB", "warning"),
    ("sa_9.jpg", "mode", "CMYK image, converted to RGB", "warning"),
    ("sa_10.json", "annotation 0", "bbox [", "warning"),
    ("sa_11.json", "annotation 1", "segmentation.counts: counts ends in the middle of a number", "error"),
    ("sa_12.json", "image.width/height", "declared 100x96 but the image is 128x96", "error"),
    ("sa_13.json", "", "file not found", "error"),
    ("sa_14.jpg", "", "image data cannot be decoded", "error"),
    ("sa_15.json", "annotation 0", "missing keys bbox, area", "warning"),
    ("sa_15.json", "annotation 1", "segmentation must be an RLE", "error"),
    ("sa_16.json", "masks", "no usable mask: all 1 cover more than 90% of the image", "error"),
]
BAD = {"sa_2", "sa_3", "sa_4", "sa_5", "sa_6", "sa_7", "sa_11", "sa_12", "sa_13", "sa_14", "sa_15", "sa_16"}


def _edit(path: Path, change: object) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 synthetic SA-1B samples, 15 of them damaged (or unusable) in a different way."""
    root = synth(tmp_path_factory.mktemp("corrupt") / "data", images=16, size=(96, 128))
    (root / "sa_2.json").write_text((root / "sa_2.json").read_text()[:200])
    _edit(root / "sa_3.json", lambda d: d.pop("annotations"))
    _edit(root / "sa_4.json", lambda d: d["annotations"][2]["segmentation"].update(size=[128, 96]))
    (root / "sa_5.jpg").unlink()
    (root / "sa_6.jpg").write_bytes(b"this is not a JPEG")
    _edit(root / "sa_7.json", lambda d: d.update(annotations=[]))
    Image.open(root / "sa_8.jpg").convert("L").save(root / "sa_8.jpg")
    Image.open(root / "sa_9.jpg").convert("CMYK").save(root / "sa_9.jpg")
    _edit(root / "sa_10.json", lambda d: d["annotations"][0].update(bbox=[0, 0, 5, 5]))
    _edit(root / "sa_11.json", lambda d: d["annotations"][1]["segmentation"].update(counts="0P"))
    _edit(root / "sa_12.json", lambda d: d["image"].update(width=100))
    (root / "sa_13.json").unlink()
    data = (root / "sa_14.jpg").read_bytes()
    (root / "sa_14.jpg").write_bytes(data[: len(data) // 3])

    def strip(doc: dict) -> None:
        doc["annotations"][0].pop("bbox")
        doc["annotations"][0].pop("area")
        doc["annotations"][1].pop("segmentation")

    _edit(root / "sa_15.json", strip)
    _edit(root / "sa_16.json", lambda d: d.update(annotations=[sa1b_annotation(np.ones((96, 128), bool), 1)]))
    return root


def test_check_data_reports_every_problem(corrupt: Path) -> None:
    problems = check_data(corrupt)
    assert all(isinstance(p, Problem) for p in problems)
    for name, field, message, severity in EXPECTED:
        found = [
            p for p in problems if Path(p.path).name == name and p.field == field and message in p.message
        ]
        assert found, f"no problem {name}: {field}: {message} in {[str(p) for p in problems]}"
        assert found[0].severity == severity
        assert str(found[0]).startswith(str(corrupt / name))
    assert not [p for p in problems if Path(p.path).stem == "sa_1"]
    assert {Path(p.path).stem for p in problems if p.severity == "error"} == BAD


def test_check_data_cli_exit_status(
    corrupt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = sorted(p.name for p in corrupt.iterdir())
    assert main(["check-data", str(corrupt)]) == 1
    out = capsys.readouterr().out
    assert "error: sa_4.json: annotation 2: RLE size (128, 96) does not match image 128x96" in out
    assert "warning: sa_9.jpg: mode: CMYK image" in out
    assert "checked 16 images" in out and "12 errors in 12 files" in out
    assert sorted(p.name for p in corrupt.iterdir()) == before
    clean = tmp_path / "clean"
    clean.mkdir()
    for name in ("sa_1.jpg", "sa_1.json"):
        shutil.copy(corrupt / name, clean / name)
    assert main(["check-data", str(clean)]) == 0
    assert "0 errors in 0 files (skipped in training), 0 warnings" in capsys.readouterr().out
    assert main(["check-data", str(tmp_path / "missing")]) == 2  # no dataset at all: an error, not a problem


def test_training_loader_skips_and_counts_bad_samples(corrupt: Path) -> None:
    train, val = get_loaders(corrupt, image_size=(32, 48), batch_size=4, val_fraction=0.0, num_workers=0)
    assert val is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(train)
    skipped = [s for b in batches for s in b["skipped"]]
    kept = {i for b in batches for i in b["image_id"]}
    assert len(skipped) == len(BAD) and kept == {"sa_1", "sa_8", "sa_9", "sa_10"}
    assert {Path(s.split(": ")[0]).stem for s in skipped} == BAD
    messages = [str(w.message) for w in caught if "skipping bad sample" in str(w.message)]
    assert len(messages) == len(BAD) and any("sa_4.json: annotation 2: RLE size" in m for m in messages)


def test_real_samples_are_clean() -> None:
    root = shared_data()
    assert check_data(root / "sa1b") == []
    for split in ("train", "val"):
        assert check_data(root / "coco" / split / "annotations.json") == []


def test_coco_problems(tmp_path: Path) -> None:
    Image.new("RGB", (30, 20)).save(tmp_path / "a.jpg")
    doc = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 30, "height": 20},
            {"id": 2, "file_name": "gone.jpg", "width": 30, "height": 20},
            {"id": 3, "file_name": "a.jpg"},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "segmentation": [[1, 1, 10, 1, 10]]},
            {"id": 11, "image_id": 7, "segmentation": [[1, 1, 10, 1, 10, 10]]},
            {"id": 12, "image_id": 2, "segmentation": [[1, 1, 10, 1, 10, 10]]},
            {"id": 13, "image_id": 1, "segmentation": {"size": [30, 20], "counts": "0"}},
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(doc))
    text = [str(p) for p in check_data(path)]
    assert f"{path}: images[2]: height and width must be positive ints, got None" in text[0]
    assert any("annotation 1 (id 11): image_id is missing or names no entry" in t for t in text)
    assert any("annotation 0 (id 10): a segmentation polygon has 5 numbers" in t for t in text)
    assert any("annotation 3 (id 13): RLE size (30, 20) does not match image 30x20" in t for t in text)
    assert any(t == f"{tmp_path / 'gone.jpg'}: image file not found" for t in text)


def test_shard_problems(tmp_path: Path) -> None:
    folder = synth(tmp_path / "data", images=2, size=(64, 96))
    _edit(folder / "sa_2.json", lambda d: d.update(annotations=[]))
    shards = write_shards(folder, tmp_path / "tars", per_shard=2)
    (tmp_path / "tars" / "sa_000001.tar").write_bytes(b"garbage" * 200)
    problems = check_data(tmp_path / "tars")
    text = [str(p) for p in problems]
    assert any(t == f"{shards[0]}:sa_2.json: annotations: empty: no masks to train on" for t in text)
    assert any("sa_000001.tar" in t and "unreadable tar data" in t for t in text)
