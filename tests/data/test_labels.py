"""Instance-label folders (``images/`` + ``labels/`` or ``masks/NAME/*.png``) as data roots."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from pycocotools import mask as mask_utils

from data_fixtures import assert_same_sample
from lora_sam.cli import main
from lora_sam.data.annotations import BadSample, DataError
from lora_sam.data.check import check_data
from lora_sam.data.datasets import CachedDataset
from lora_sam.data.loaders import SA1BFolder, detect_kind, get_loaders, open_dataset
from lora_sam.data.prepare import prepare_cache
from lora_sam.data.synth import make_synthetic

SIZE = (48, 64)  # synthetic images (H, W)
TRAIN = (32, 48)  # training size


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same three synthetic scenes in the SA-1B, labels and masks layouts."""
    root = tmp_path_factory.mktemp("layouts")
    for layout in ("sa1b", "labels", "masks"):
        make_synthetic(root / layout, images=3, seed=5, image_size=SIZE, format=layout)
    return root


def _rle_masks(json_path: Path) -> list[np.ndarray]:
    doc = json.loads(json_path.read_text())
    return [mask_utils.decode({"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"].encode()})
            .astype(bool) for a in doc["annotations"]]


def _wholes(masks: list[np.ndarray]) -> list[int]:
    """Brute force: masks contained in no other mask (of equal masks the first)."""
    def inside(i: int, j: int) -> bool:
        same = np.array_equal(masks[i], masks[j])
        return not (masks[i] & ~masks[j]).any() and (not same or j < i)

    return [i for i in range(len(masks)) if masks[i].any() and not any(inside(i, j) for j in range(len(masks)) if j != i)]


def _problems(root: Path) -> set[tuple[str, str, str]]:
    return {(str(Path(p.path).relative_to(root)), p.field, p.severity) for p in check_data(root, image_size=TRAIN)}


def test_masks_layout_holds_the_sa1b_masks_and_gives_the_same_samples(scenes: Path) -> None:
    for n in (1, 2, 3):
        name = f"sa_{n}"
        assert (scenes / "masks" / "images" / f"{name}.jpg").read_bytes() == (scenes / "sa1b" / f"{name}.jpg").read_bytes()
        files = sorted((scenes / "masks" / "masks" / name).glob("*.png"))
        reference = _rle_masks(scenes / "sa1b" / f"{name}.json")
        assert len(files) == len(reference) > 0
        for file, mask in zip(files, reference):
            assert np.array_equal(np.asarray(Image.open(file)) != 0, mask), file
    assert detect_kind(scenes / "masks") == "masks"
    direct = open_dataset(scenes / "masks", image_size=TRAIN, masks_per_image=4, seed=3)
    reference_set = SA1BFolder(scenes / "sa1b", image_size=TRAIN, masks_per_image=4, seed=3)
    assert [direct.image_id(i) for i in range(3)] == ["sa_1", "sa_2", "sa_3"]
    for epoch in (0, 2):
        for i in range(3):
            assert_same_sample(direct[(i, epoch)], reference_set[(i, epoch)])


def test_labels_layout_holds_the_visible_wholes(scenes: Path) -> None:
    dataset = open_dataset(scenes / "labels", image_size=TRAIN)
    reference_set = SA1BFolder(scenes / "sa1b", image_size=TRAIN)
    assert detect_kind(scenes / "labels") == "labels"
    for i in range(3):
        name = f"sa_{i + 1}"
        labels = np.asarray(Image.open(scenes / "labels" / "labels" / f"{name}.png"))
        reference = _rle_masks(scenes / "sa1b" / f"{name}.json")
        wholes = _wholes(reference)
        assert 0 < len(wholes) < len(reference)
        values = [v for v in np.unique(labels) if v]
        assert len(values) == len(wholes)
        for value, index in zip(values, wholes):
            assert np.array_equal(labels == value, reference[index])
        raw, problems = dataset.read(i)
        sa1b_raw, _ = reference_set.read(i)
        assert problems == [] and raw is not None and sa1b_raw is not None
        assert np.array_equal(raw.masks, sa1b_raw.masks[wholes])
        assert np.allclose(raw.fractions, sa1b_raw.fractions[wholes])
        assert np.array_equal(raw.image, sa1b_raw.image)


def _square_map(shape: tuple[int, int], squares: dict[int, tuple[int, int, int]], dtype: type) -> np.ndarray:
    labels = np.zeros(shape, dtype)
    for value, (y, x, side) in squares.items():
        labels[y : y + side, x : x + side] = value
    return labels


def test_hand_made_label_map_gives_its_squares_and_drops_as_sa1b(tmp_path: Path) -> None:
    squares = {3: (2, 3, 6), 7: (10, 20, 20), 200: (30, 2, 2), 9: (0, 0, 1)}  # 200 and 9: too small
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    grey = (np.arange(32 * 48, dtype=np.uint8).reshape(32, 48) * 7)
    Image.fromarray(grey).save(tmp_path / "images" / "cell.png")
    Image.fromarray(_square_map((32, 48), squares, np.uint8)).save(tmp_path / "labels" / "cell.png")
    sample = get_loaders(tmp_path, image_size=TRAIN, val_fraction=0, num_workers=0)[0].dataset[0]
    assert sample["image_id"] == "cell" and sample["input_size"].tolist() == [32, 48]
    assert np.array_equal(sample["image"].numpy(), np.repeat(grey[None].astype(np.float32), 3, axis=0))
    expected = _square_map((32, 48), squares, np.uint8)
    assert [m.numpy().tolist() for m in sample["masks"]] == [(expected == v).tolist() for v in (3, 7)]
    few = open_dataset(tmp_path, image_size=TRAIN, max_mask_fraction=0.2)[0]
    assert few["masks"].shape[0] == 1 and few["masks"][0].sum() == 36  # the 20x20 square is > 20 %
    assert check_data(tmp_path, image_size=TRAIN) == []


def test_16_bit_tiff_and_png(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    rgb = np.zeros((32, 48, 3), np.uint16)
    rgb[..., 0], rgb[..., 1], rgb[:16, :, 2] = 65535, 1000, 40000  # 255, 3.89, 155.64 in 8 bit
    tifffile.imwrite(tmp_path / "images" / "a.tif", rgb)
    squares = {1000: (0, 0, 8), 40000: (16, 16, 16)}
    tifffile.imwrite(tmp_path / "labels" / "a.tiff", _square_map((32, 48), squares, np.uint16))
    grey = np.full((32, 48), 30000, np.uint16)  # 116.7 in 8 bit
    Image.fromarray(grey).save(tmp_path / "images" / "b.png")
    assert Image.open(tmp_path / "images" / "b.png").mode == "I;16"
    Image.fromarray(_square_map((32, 48), {300: (4, 4, 10)}, np.uint16)).save(tmp_path / "labels" / "b.png")
    dataset = open_dataset(tmp_path, image_size=TRAIN, strict=True)
    a, b = dataset[0], dataset[1]
    assert a["image"][:, 0, 0].tolist() == [255, 4, 156] and a["image"][:, 20, 0].tolist() == [255, 4, 0]
    assert [int(m.sum()) for m in a["masks"]] == [64, 256] and bool(a["masks"][1][16, 16])
    assert b["image"].unique().tolist() == [117] and b["masks"].shape[0] == 1 and int(b["masks"].sum()) == 100
    assert check_data(tmp_path, image_size=TRAIN) == []


@pytest.fixture
def bad_labels(tmp_path: Path) -> Path:
    """A labels root with a clean image 'ok' and one problem per other NAME."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    square = _square_map((32, 48), {1: (4, 4, 10)}, np.uint8)
    for name in ("ok", "nolabel", "size", "float", "rgb", "broken", "empty", "negative", "twice"):
        Image.fromarray(np.full((32, 48, 3), 90, np.uint8)).save(images / f"{name}.png")
    Image.fromarray(np.full((32, 48, 3), 90, np.uint8)).save(images / "twice.jpg")
    (images / "badimage.jpg").write_bytes(b"not a jpeg")
    for name in ("ok", "orphan", "badimage", "twice"):
        Image.fromarray(square).save(labels / f"{name}.png")
    Image.fromarray(square[:20, :30]).save(labels / "size.png")
    tifffile.imwrite(labels / "float.tif", square.astype(np.float32) * 0.5)
    Image.fromarray(np.stack([square] * 3, axis=2)).save(labels / "rgb.png")
    (labels / "broken.png").write_bytes(b"\x89PNG garbage")
    Image.fromarray(np.zeros((32, 48), np.uint8)).save(labels / "empty.png")
    tifffile.imwrite(labels / "negative.tif", square.astype(np.int16) * -1)
    (images / "notes.txt").write_text("mine")
    return tmp_path


EXPECTED_LABELS = {
    ("images/nolabel.png", "labels", "error"): "no labels/nolabel{.png,.tif,.tiff}; add it or remove the image",
    ("labels/orphan.png", "image", "error"): "no image images/orphan{.png,.jpg,.jpeg,.tif,.tiff}",
    ("labels/size.png", "size", "error"): "label map is 30x20 but the image size.png is 48x32",
    ("labels/float.tif", "dtype", "error"): "float32 values with fractions (0.5 at row 4, column 4)",
    ("labels/rgb.png", "mode", "error"): "RGB image; a label map is a single-channel integer image",
    ("labels/broken.png", "", "error"): "not a readable image",
    ("images/badimage.jpg", "", "error"): "not a readable image",
    ("labels/empty.png", "values", "error"): "no instance: every pixel is 0",
    ("labels/negative.tif", "values", "error"): "negative values (min -1)",
    ("labels/twice.png", "name", "error"): "another file named twice (images/twice.png); keep one",
    ("images/notes.txt", "", "warning"): "ignored",
}


def test_label_errors_name_the_file_and_field(bad_labels: Path, capsys: pytest.CaptureFixture[str]) -> None:
    problems = check_data(bad_labels, image_size=TRAIN)
    for (path, field, severity), message in EXPECTED_LABELS.items():
        found = [p for p in problems if p.path == str(bad_labels / path) and p.field == field and message in p.message]
        assert found and found[0].severity == severity, (path, field, [str(p) for p in problems])
    assert {(p.path, p.field) for p in problems} == {(str(bad_labels / k[0]), k[1]) for k in EXPECTED_LABELS}
    assert main(["check-data", str(bad_labels), "--image-size", *map(str, TRAIN)]) == 1
    out = capsys.readouterr().out
    assert "error: labels/size.png: size: label map is 30x20 but the image size.png is 48x32" in out
    assert "checked 11 images" in out and "10 errors in 10 files" in out and "1 warnings" in out


def test_training_skips_bad_labels_with_a_warning(bad_labels: Path) -> None:
    train, _ = get_loaders(bad_labels, image_size=TRAIN, batch_size=4, val_fraction=0, num_workers=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(train)
    assert {i for b in batches for i in b["image_id"]} == {"ok"}
    skipped = [s for b in batches for s in b["skipped"]]
    assert len(skipped) == 10 and any("size.png: size: label map is 30x20" in s for s in skipped)
    assert sum("skipping bad sample" in str(w.message) for w in caught) == 10
    strict = open_dataset(bad_labels, image_size=TRAIN, strict=True)
    index = [strict.image_id(i) for i in range(len(strict))].index("float")
    with pytest.raises(DataError, match=r"labels/float.tif: dtype: float32 values with fractions"):
        strict[index]


def test_mask_folder_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "images").mkdir()
    mask = np.zeros((32, 48), np.uint8)
    mask[4:14, 4:14] = 255
    for name in ("ok", "nomasks", "size", "empty", "broken", "colour"):
        Image.fromarray(np.full((32, 48), 90, np.uint8)).save(tmp_path / "images" / f"{name}.png")
    for name in ("ok", "orphan", "size", "empty", "broken", "colour"):
        (tmp_path / "masks" / name).mkdir(parents=True)
    for name in ("ok", "orphan", "broken"):
        Image.fromarray(mask).save(tmp_path / "masks" / name / "0.png")
    Image.fromarray(mask[:30]).save(tmp_path / "masks" / "size" / "0.png")
    (tmp_path / "masks" / "broken" / "1.png").write_bytes(b"nope")
    Image.fromarray(np.stack([mask] * 3, axis=2)).save(tmp_path / "masks" / "colour" / "0.png")
    assert _problems(tmp_path) == {
        ("images/nomasks.png", "masks", "error"), ("masks/orphan", "image", "error"),
        ("masks/size/0.png", "size", "error"), ("masks/empty", "masks", "error"),
        ("masks/broken/1.png", "", "error"), ("masks/colour/0.png", "mode", "warning"),
    }
    dataset = open_dataset(tmp_path, image_size=TRAIN)
    colour = dataset[[dataset.image_id(i) for i in range(len(dataset))].index("colour")]
    assert int(colour["masks"].sum()) == 100
    for name in ("nomasks", "size", "empty", "broken", "colour"):
        (tmp_path / "images" / f"{name}.png").unlink()
    for name in ("orphan", "size", "empty", "broken", "colour"):
        for file in (tmp_path / "masks" / name).iterdir():
            file.unlink()
        (tmp_path / "masks" / name).rmdir()
    assert main(["check-data", str(tmp_path)]) == 0
    assert "checked 1 images" in capsys.readouterr().out


def test_prepare_then_cache_equals_the_direct_dataset(scenes: Path, tmp_path: Path) -> None:
    options = dict(masks_per_image=3, seed=1)
    for layout in ("labels", "masks"):
        assert main(["prepare", str(scenes / layout), str(tmp_path / layout), "--image-size", *map(str, TRAIN)]) == 0
        cached = CachedDataset(tmp_path / layout, **options)
        direct = open_dataset(scenes / layout, image_size=TRAIN, **options)
        assert len(cached) == len(direct) == 3
        for epoch in (0, 1):
            for i in range(3):
                assert_same_sample(cached[(i, epoch)], direct[(i, epoch)])


def test_prepare_keeps_bad_labels_bad(bad_labels: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    out = tmp_path_factory.mktemp("cache") / "bad"
    prepare_cache(bad_labels, out, image_size=TRAIN, progress=False)
    cached, direct = CachedDataset(out), open_dataset(bad_labels, image_size=TRAIN)
    assert len(cached) == len(direct) == 11
    for i in range(len(direct)):
        if direct.image_id(i) == "ok":
            assert_same_sample(cached[i], direct[i])
        else:
            assert isinstance(cached[i], BadSample) and cached[i] == direct[i]


def test_synth_cli_writes_each_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for layout in ("labels", "masks"):
        out = tmp_path / layout
        args = ["synth", str(out), "--images", "2", "--height", "40", "--width", "56", "--format", layout]
        assert main(args) == 0
        assert sorted(p.name for p in (out / "images").iterdir()) == ["sa_1.jpg", "sa_2.jpg"]
        assert detect_kind(out) == layout and not list(out.glob("*.json"))
        assert main(["check-data", str(out), "--image-size", *map(str, TRAIN)]) == 0
    assert sorted(p.name for p in (tmp_path / "labels" / "labels").iterdir()) == ["sa_1.png", "sa_2.png"]
    assert "in the masks layout" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown format 'coco'"):
        make_synthetic(tmp_path / "x", images=1, format="coco")
