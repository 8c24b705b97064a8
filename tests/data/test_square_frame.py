"""SAM 2's square frame (``SampleOptions(frame="square")``): the image fills (H, W), each axis scaled on its own."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from data_fixtures import synth
from lora_sam.data.annotations import DataError
from lora_sam.data.datasets import CachedDataset
from lora_sam.data.loaders import SA1BFolder, get_loaders, open_dataset
from lora_sam.data.prepare import prepare_cache
from lora_sam.data.samples import SampleOptions

SIZE = (64, 64)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth(tmp_path_factory.mktemp("square") / "data", images=3, size=(96, 144))


def _nearest(full: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Brute force: output pixel (i, j) reads source pixel (floor((i + 0.5) h0 / H), floor((j + 0.5) w0 / W))."""
    (h0, w0), (height, width) = full.shape, size
    out = np.zeros(size, bool)
    for i in range(height):
        for j in range(width):
            out[i, j] = full[min(int((i + 0.5) * h0 / height), h0 - 1), min(int((j + 0.5) * w0 / width), w0 - 1)]
    return out


@pytest.mark.parametrize("fast", [True, False])
def test_square_samples_fill_the_frame_and_masks_follow_each_axis(root: Path, fast: bool) -> None:
    dataset = SA1BFolder(root, image_size=SIZE, frame="square", fast=fast, masks_per_image=50,
                         max_mask_fraction=1.0, min_mask_pixels=1)
    sample = dataset[0]
    assert sample["input_size"].tolist() == list(SIZE) and sample["original_size"].tolist() == [96, 144]
    pixels = np.asarray(Image.open(root / "sa_1.jpg").convert("RGB"))
    expected = cv2.resize(pixels, SIZE[::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(sample["image"].permute(1, 2, 0).numpy() - expected).max() <= 1  # no padding: every row and column
    annotations = json.loads((root / "sa_1.json").read_text())["annotations"]
    full = [mask_utils.decode(a["segmentation"]).astype(bool) for a in annotations]
    assert len(sample["masks"]) == len(full)
    for mask, reference in zip(sample["masks"].numpy(), full):
        assert np.array_equal(mask, _nearest(reference, SIZE))


def test_get_loaders_and_open_dataset_take_the_frame(root: Path) -> None:
    train, _ = get_loaders(root, batch_size=3, image_size=SIZE, frame="square", val_fraction=0.0, num_workers=0)
    assert (next(iter(train))["input_size"] == torch.tensor(SIZE)).all()
    padded = open_dataset(root, image_size=SIZE)[0]  # SAM v1's frame stays the default
    assert padded["input_size"].tolist() == [43, 64]
    with pytest.raises(ValueError, match="frame must be one of pad, square"):
        SampleOptions(frame="stretch")


def test_a_cache_keeps_its_frame(root: Path, tmp_path: Path) -> None:
    prepare_cache(root, tmp_path / "cache", image_size=SIZE, frame="square", progress=False)
    cached = CachedDataset(tmp_path / "cache")
    assert cached.options.frame == "square" and cached[0]["input_size"].tolist() == list(SIZE)
    with pytest.raises(DataError, match="frame='square'.*--frame pad"):
        CachedDataset(tmp_path / "cache", frame="pad")
