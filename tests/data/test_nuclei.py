"""``lora-sam nuclei``: the stardist wheel's real DSB 2018 image as an instance-label folder of fixed tiles."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from lora_sam.cli import main

SPEC = importlib.util.find_spec("stardist")
needs_stardist = pytest.mark.skipif(SPEC is None, reason="the stardist package is not installed ([nuclei])")


def _originals() -> tuple[np.ndarray, np.ndarray]:
    images = Path(next(iter(SPEC.submodule_search_locations))) / "data" / "images"
    return tifffile.imread(images / "img2d.tif"), tifffile.imread(images / "mask2d.tif")


@needs_stardist
def test_the_folder_holds_the_125_nuclei_in_tiles_that_reassemble_the_image(tmp_path: Path) -> None:
    assert main(["nuclei", str(tmp_path / "dsb")]) == 0
    image, labels = _originals()
    record = json.loads((tmp_path / "dsb" / "nuclei.json").read_text())
    whole_image, whole_labels = np.zeros_like(image), np.zeros_like(labels)
    for t in record["tiles"]:
        folder = tmp_path / "dsb" / t["split"]
        tile_image = np.asarray(Image.open(folder / "images" / f"{t['name']}.png"))
        tile_labels = np.asarray(Image.open(folder / "labels" / f"{t['name']}.png"))
        whole_image[t["row"]:t["row"] + 256, t["col"]:t["col"] + 256] = tile_image
        whole_labels[t["row"]:t["row"] + 256, t["col"]:t["col"] + 256] = tile_labels
    assert np.array_equal(whole_image, image) and np.array_equal(whole_labels, labels)
    assert len(np.unique(labels[labels > 0])) == record["nuclei"] == 125
    assert [t["split"] for t in record["tiles"]] == ["train", "train", "train", "val"]


@needs_stardist
def test_the_tiles_load_as_an_instance_label_folder(tmp_path: Path) -> None:
    from lora_sam.data.loaders import open_dataset

    assert main(["nuclei", str(tmp_path / "dsb")]) == 0
    _, labels = _originals()
    val = open_dataset(tmp_path / "dsb" / "val", image_size=(256, 256))
    assert len(val) == 1 and len(open_dataset(tmp_path / "dsb" / "train", image_size=(256, 256))) == 3
    ids = np.unique(labels[256:, 256:])
    assert 0 < val[0]["masks"].shape[0] <= len(ids[ids > 0])


@needs_stardist
def test_the_folder_is_a_fixed_split_for_get_loaders_and_eval(tmp_path: Path) -> None:
    """``get_loaders(OUT)`` trains on OUT/train and validates on OUT/val (the documented split), whatever
    ``val_fraction``; ``eval --split all`` on OUT says to pick a split."""
    from lora_sam.data.loaders import get_loaders
    from lora_sam.errors import UserError
    from lora_sam.evaluation.options import EvalOptions
    from lora_sam.evaluation.run import eval_samples

    assert main(["nuclei", str(tmp_path / "dsb")]) == 0
    record = json.loads((tmp_path / "dsb" / "nuclei.json").read_text())
    names = {split: {t["name"] for t in record["tiles"] if t["split"] == split} for split in ("train", "val")}
    train, val = get_loaders(tmp_path / "dsb", image_size=(256, 256), batch_size=1, val_fraction=0.9, frame="pad")
    seen = {split: {Path(str(loader.dataset.image_id(i))).stem for i in range(len(loader.dataset))}
            for split, loader in (("train", train), ("val", val))}
    assert seen == names
    with pytest.raises(UserError, match="fixed split"):
        eval_samples(tmp_path / "dsb", (256, 256), EvalOptions(split="all"), frame="pad")


def test_without_stardist_the_command_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "stardist" else real(name, *a))
    assert main(["nuclei", str(tmp_path / "dsb")]) == 2
    err = capsys.readouterr().err
    assert "lora_sam[nuclei]" in err and "Traceback" not in err
    assert not (tmp_path / "dsb").exists()
