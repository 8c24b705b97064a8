from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from data_fixtures import SHARED_DATA
from lora_sam.cli import main
from lora_sam.data.synth import make_synthetic

SIZE = (120, 160)
REAL_JSON = SHARED_DATA / "sa1b" / "sa_1.json"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    make_synthetic(out, 3, seed=7, image_size=SIZE)
    return out


def _records(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("sa_*.json"))]


def _masks(record: dict) -> list[np.ndarray]:
    return [mask_utils.decode(a["segmentation"]).astype(bool) for a in record["annotations"]]


def test_writes_jpeg_and_json_pairs(tmp_path: Path) -> None:
    paths = make_synthetic(tmp_path / "new" / "dir", 2, image_size=SIZE, start_id=5)
    assert [p.name for p in paths] == ["sa_5.jpg", "sa_6.jpg"]
    for path in paths:
        assert path.with_suffix(".json").is_file()
        with Image.open(path) as image:
            assert image.format == "JPEG"
            assert image.mode == "RGB"
            assert image.size == (SIZE[1], SIZE[0])


def test_json_matches_sa1b_layout(folder: Path) -> None:
    for path in sorted(folder.glob("sa_*.json")):
        text = path.read_text()
        assert "\n" not in text.strip()
        record = json.loads(text)
        image = record["image"]
        assert image == {
            "image_id": int(path.stem[3:]),
            "width": SIZE[1],
            "height": SIZE[0],
            "file_name": path.with_suffix(".jpg").name,
        }
        ids = [a["id"] for a in record["annotations"]]
        assert len(set(ids)) == len(ids)
        for a in record["annotations"]:
            assert isinstance(a["segmentation"]["counts"], str)
            assert a["segmentation"]["size"] == list(SIZE)
            assert isinstance(a["area"], int)
            assert a["crop_box"] == [0.0, 0.0, float(SIZE[1]), float(SIZE[0])]
            assert 0.0 < a["predicted_iou"] < 1.1
            assert 0.0 < a["stability_score"] <= 1.0
            assert len(a["point_coords"]) == 1 and len(a["point_coords"][0]) == 2


@pytest.mark.skipif(not REAL_JSON.is_file(), reason="real SA-1B sample not available")
def test_same_keys_as_real_sa1b(folder: Path) -> None:
    real = json.loads(REAL_JSON.read_text())
    ours = _records(folder)[0]
    assert ours.keys() == real.keys()
    assert ours["image"].keys() == real["image"].keys()
    assert ours["annotations"][0].keys() == real["annotations"][0].keys()
    assert ours["annotations"][0]["segmentation"].keys() == real["annotations"][0]["segmentation"].keys()


def test_masks_agree_with_area_bbox_and_point(folder: Path) -> None:
    for record in _records(folder):
        assert 5 <= len(record["annotations"]) <= 40
        for a, mask in zip(record["annotations"], _masks(record)):
            assert mask.shape == SIZE
            assert a["area"] == int(mask.sum()) > 0
            ys, xs = np.nonzero(mask)
            x0, y0 = xs.min(), ys.min()
            assert a["bbox"] == [float(x0), float(y0), float(xs.max() - x0), float(ys.max() - y0)]
            x, y = a["point_coords"][0]
            assert mask[int(y), int(x)]


def test_masks_nest_three_levels(folder: Path) -> None:
    for record in _records(folder):
        masks = _masks(record)
        inside = [
            [
                j
                for j, outer in enumerate(masks)
                if j != i and not (inner & ~outer).any() and outer.sum() > inner.sum()
            ]
            for i, inner in enumerate(masks)
        ]
        assert any(inside), "no mask is a strict subset of another"
        chains = [i for i, parents in enumerate(inside) if any(inside[j] for j in parents)]
        assert chains, "no three-level nesting (sub-part in part in object)"


def test_objects_differ_in_colour_from_background(folder: Path) -> None:
    record = _records(folder)[0]
    image = np.asarray(Image.open(folder / record["image"]["file_name"]), dtype=np.float32)
    masks = _masks(record)
    union = np.any(masks, axis=0)
    background = image[~union].mean(axis=0)
    biggest = max(masks, key=lambda m: m.sum())
    assert np.abs(image[biggest].mean(axis=0) - background).max() > 10.0


def test_deterministic_per_seed_and_id(tmp_path: Path, folder: Path) -> None:
    make_synthetic(tmp_path / "a", 2, seed=7, image_size=SIZE, start_id=2)
    for name in ("sa_2.jpg", "sa_2.json", "sa_3.jpg", "sa_3.json"):
        assert (tmp_path / "a" / name).read_bytes() == (folder / name).read_bytes()
    make_synthetic(tmp_path / "b", 1, seed=8, image_size=SIZE, start_id=2)
    assert (tmp_path / "b" / "sa_2.jpg").read_bytes() != (folder / "sa_2.jpg").read_bytes()


@pytest.mark.parametrize(
    "kwargs",
    [{"images": -1}, {"seed": -1}, {"image_size": (8, 640)}, {"start_id": -3}],
)
def test_rejects_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        make_synthetic(tmp_path, **kwargs)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["synth", str(tmp_path), "--images", "2"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sa_1.jpg", "sa_1.json", "sa_2.jpg", "sa_2.json"]
    record = json.loads((tmp_path / "sa_1.json").read_text())
    assert (record["image"]["height"], record["image"]["width"]) == (480, 640)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "wrote 2" in last and str(tmp_path) in last
