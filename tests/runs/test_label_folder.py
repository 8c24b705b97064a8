"""A folder of instance-label images trains, validates and evaluates as the same data in SA-1B form.

The SA-1B folder is written here from the label PNGs with pycocotools (the JPEG copied as is), not with
lora_sam's writers, so both roots hold the same objects by construction.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from lora_sam import get_loaders
from lora_sam.cli import main
from lora_sam.data.synth import make_synthetic
from lora_sam.models.sam_v1.model import SamV1, build_sam
from lora_sam.training.recipe import RecipeOptions, interactive_step

SIZE = (64, 96)


def _sa1b_from_labels(labels_root: Path, out: Path) -> Path:
    out.mkdir()
    for image in sorted((labels_root / "images").glob("*.jpg")):
        shutil.copy(image, out / image.name)
        label = np.asarray(Image.open(labels_root / "labels" / f"{image.stem}.png"))
        h, w = label.shape
        annotations = []
        for k, value in enumerate(v for v in np.unique(label) if v != 0):  # increasing value, as the labels layout
            rle = mask_utils.encode(np.asfortranarray((label == value).astype(np.uint8)))
            annotations.append({"id": k, "segmentation": {"size": [h, w], "counts": rle["counts"].decode()},
                                "area": int(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist(),
                                "predicted_iou": 1.0, "stability_score": 1.0, "point_coords": [[0.0, 0.0]],
                                "crop_box": [0.0, 0.0, float(w), float(h)]})
        record = {"image": {"image_id": int(image.stem.split("_")[1]), "width": w, "height": h,
                            "file_name": image.name}, "annotations": annotations}
        (out / f"{image.stem}.json").write_text(json.dumps(record))
    return out


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    labels = tmp_path_factory.mktemp("cells_labels")
    make_synthetic(labels, 6, image_size=(96, 144), seed=4, domain="microscopy", format="labels")
    return {"labels": labels, "sa1b": _sa1b_from_labels(labels, tmp_path_factory.mktemp("x") / "cells_sa1b")}


def _compare(root: Path, out: Path) -> dict:
    rc = main(["compare", "--data", str(root), "--out", str(out), "--model-type", "tiny", "--image-size", *map(str, SIZE),
               "--steps", "2", "--val-every", "2", "--val-fraction", "0.34", "--batch-size", "1",
               "--masks-per-image", "2", "--iterations", "2", "--eval-max-images", "2", "--eval-masks-per-image", "2",
               "--eval-max-clicks", "2", "--quiet"])
    assert rc == 0
    return json.loads((out / "compare.json").read_text())


@pytest.mark.slow
def test_labels_train_validate_and_evaluate_as_the_sa1b_folder(roots: dict[str, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    for kind in ("labels", "sa1b"):
        assert main(["check-data", str(roots[kind])]) == 0, kind
    checked = capsys.readouterr().out
    assert checked.count("checked 6 images") == 2 and checked.count("0 errors in 0 files") == 2
    got = {kind: _compare(root, tmp_path / kind) for kind, root in roots.items()}
    for mode in ("lora", "full"):
        a, b = got["labels"]["runs"][mode], got["sa1b"]["runs"][mode]
        assert a["metrics"] and a["metrics"] == pytest.approx(b["metrics"], rel=1e-5, abs=1e-6), mode
    assert got["labels"]["base"]["metrics"] == pytest.approx(got["sa1b"]["base"]["metrics"], rel=1e-5, abs=1e-6)
    for kind in roots:
        assert (tmp_path / kind / "lora" / "adapter.safetensors").is_file()
        assert (tmp_path / kind / "full" / "model.pth").is_file()


def test_with_one_mask_under_a_click_all_three_outputs_learn_that_mask(roots: dict[str, Path],
                                                                        tiny_checkpoint: Path) -> None:
    """What the README says: a label map gives each pixel one object, so the first click's 3 outputs all
    train against the clicked object."""
    train, _ = get_loaders(roots["labels"], image_size=SIZE, batch_size=2, num_workers=0, masks_per_image=6,
                           val_fraction=0.34)
    batch = next(iter(train))
    sam = build_sam("tiny", str(tiny_checkpoint), SIZE).train()
    out = interactive_step(SamV1(sam), batch, torch.Generator().manual_seed(0), RecipeOptions(point_prob=1.0),
                           keep_records=True)
    checked = 0
    for record, masks in zip(out.records, batch["masks"]):
        assert (masks.sum(0) <= 1).all(), "a label map's masks never overlap"
        first = record["point"][0]
        for k, index in enumerate(first["target_index"].tolist()):
            h, w = first["gt"].shape[-2:]
            assert all(torch.equal(g, masks[index][:h, :w]) for g in first["gt"][k])
            checked += 1
    assert checked >= 4
