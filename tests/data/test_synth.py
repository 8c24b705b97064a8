from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from data_fixtures import SHARED_DATA
from lora_sam.cli import main
from lora_sam.data.synth import DOMAINS, SA1B_ASPECTS, make_synthetic, sa1b_size

SIZE = (120, 160)
REAL_JSON = SHARED_DATA / "sa1b" / "sa_1.json"


@pytest.fixture(scope="module", params=list(DOMAINS))
def folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp(f"synth_{request.param}")
    make_synthetic(out, 3, seed=7, image_size=SIZE, domain=request.param)
    return out


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both domains at SA-1B shapes with a longest side of 384 px."""
    folders = {}
    for domain in DOMAINS:
        folders[domain] = tmp_path_factory.mktemp(f"large_{domain}")
        make_synthetic(folders[domain], 4, seed=3, long_side=384, domain=domain)
    return folders


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
        assert 3 <= len(record["annotations"]) <= 48
        for a, mask in zip(record["annotations"], _masks(record)):
            assert mask.shape == SIZE
            assert a["area"] == int(mask.sum()) > 0
            ys, xs = np.nonzero(mask)
            x0, y0 = xs.min(), ys.min()
            assert a["bbox"] == [float(x0), float(y0), float(xs.max() - x0), float(ys.max() - y0)]
            x, y = a["point_coords"][0]
            assert mask[int(y), int(x)]


def test_masks_nest_three_levels(large: dict[str, Path]) -> None:
    for record in [r for folder in large.values() for r in _records(folder)]:
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


def test_objects_differ_in_colour_from_background(tmp_path: Path) -> None:
    make_synthetic(tmp_path, 1, seed=7, image_size=SIZE)
    folder = tmp_path
    record = _records(folder)[0]
    image = np.asarray(Image.open(folder / record["image"]["file_name"]), dtype=np.float32)
    masks = _masks(record)
    union = np.any(masks, axis=0)
    background = image[~union].mean(axis=0)
    biggest = max(masks, key=lambda m: m.sum())
    assert np.abs(image[biggest].mean(axis=0) - background).max() > 10.0


def test_deterministic_per_seed_and_id(tmp_path: Path, folder: Path) -> None:
    domain = "microscopy" if folder.name.startswith("synth_microscopy") else "scenes"
    make_synthetic(tmp_path / "a", 2, seed=7, image_size=SIZE, start_id=2, domain=domain, workers=2)
    for name in ("sa_2.jpg", "sa_2.json", "sa_3.jpg", "sa_3.json"):
        assert (tmp_path / "a" / name).read_bytes() == (folder / name).read_bytes()
    make_synthetic(tmp_path / "b", 1, seed=8, image_size=SIZE, start_id=2, domain=domain)
    assert (tmp_path / "b" / "sa_2.jpg").read_bytes() != (folder / "sa_2.jpg").read_bytes()


@pytest.mark.parametrize(
    "kwargs",
    [{"images": -1}, {"seed": -1}, {"image_size": (8, 640)}, {"start_id": -3}, {"domain": "mri"},
     {"long_side": 10}],
)
def test_rejects_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        make_synthetic(tmp_path, **kwargs)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["synth", str(tmp_path), "--images", "2", "--height", "96", "--width", "128"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sa_1.jpg", "sa_1.json", "sa_2.jpg", "sa_2.json"]
    record = json.loads((tmp_path / "sa_1.json").read_text())
    assert (record["image"]["height"], record["image"]["width"]) == (96, 128)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "wrote 2" in last and str(tmp_path) in last
    assert main(["synth", str(tmp_path), "--images", "1", "--height", "96"]) == 2
    assert "--height and --width" in capsys.readouterr().err  # errors go to stderr


def test_sa1b_shapes_cover_every_aspect_in_both_orientations() -> None:
    rng = np.random.default_rng(0)
    sizes = [sa1b_size(rng, 900) for _ in range(300)]
    assert all(max(s) == 900 for s in sizes)
    ratios = {round(min(s) / max(s), 2) for s in sizes}
    assert ratios == {round(900 * a / b) / 900 for a, b in SA1B_ASPECTS} or ratios == {
        round(round(900 * a / b) / 900, 2) for a, b in SA1B_ASPECTS}
    assert any(h > w for h, w in sizes) and any(w > h for h, w in sizes)


def test_large_images_take_sa1b_shapes(large: dict[str, Path]) -> None:
    for folder in large.values():
        for record in _records(folder):
            h, w = record["image"]["height"], record["image"]["width"]
            assert max(h, w) == 384
            assert any(abs(min(h, w) / 384 - a / b) < 0.01 for a, b in SA1B_ASPECTS)


def test_scenes_have_thin_shapes_and_a_wide_range_of_sizes(large: dict[str, Path]) -> None:
    elongated, fractions = 0, []
    for record in _records(large["scenes"]):
        h, w = record["image"]["height"], record["image"]["width"]
        for a, mask in zip(record["annotations"], _masks(record)):
            fractions.append(a["area"] / (h * w))
            ys, xs = np.nonzero(mask)
            # the mask's own thickness: area over its longest extent (a rod of width t has area ~ t * length)
            length = np.hypot(np.ptp(xs) + 1, np.ptp(ys) + 1)
            elongated += a["area"] / length < 0.04 * length
    assert elongated >= 1, "no thin shape (thickness under 4 % of its length)"
    assert min(fractions) < 0.002 and max(fractions) > 0.08, "sizes do not span small to large"


def test_microscopy_is_grey_and_low_contrast(large: dict[str, Path]) -> None:
    for domain, folder in large.items():
        record = _records(folder)[0]
        image = np.asarray(Image.open(folder / record["image"]["file_name"]), dtype=np.float32)
        colour = np.abs(image - image.mean(axis=2, keepdims=True)).mean()
        if domain == "microscopy":
            assert colour < 2.0, "microscopy images must be grey"
            masks = _masks(record)
            cells = [m for m in masks if not any((m & ~o).sum() == 0 and o.sum() > m.sum() for o in masks)]
            inside = np.mean([image[m].mean() for m in cells])
            assert abs(inside - image[~np.any(masks, axis=0)].mean()) < 25.0, "cells should differ by a few grey levels"
        else:
            assert colour > 5.0, "scenes are colourful"
