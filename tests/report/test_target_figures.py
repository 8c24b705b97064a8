"""Figures: valid PNG files, prompts that always have a target, the real SA-1B sample when present."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_fixtures import SHARED_DATA
from lora_sam.report.target_figures import (
    plot_box_sample,
    plot_point_sample,
    target_figure_prompts,
    target_figures,
)
from lora_sam.training.targets import box_sample, masks_to_boxes, point_sample

SA1B = SHARED_DATA / "sa1b"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: Path, min_bytes: int = 5000) -> None:
    assert path.is_file() and path.suffix == ".png"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > min_bytes
    with Image.open(path) as image:
        image.verify()


def _scene(height: int = 48, width: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A textured image with nested masks: two objects, their parts and sub-parts, and a stray mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]

    def rect(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        return (xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1)

    def disc(cx: float, cy: float, r: float) -> np.ndarray:
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r

    body = rect(4, 6, 34, 40)
    masks = [body, rect(8, 10, 22, 30), rect(10, 14, 16, 22), disc(28, 32, 5) & body]
    ball = disc(48, 20, 12)
    masks += [ball, disc(46, 18, 6), disc(45, 17, 2), rect(40, 40, 60, 46)]
    image = rng.integers(0, 80, (height, width, 3)).astype(np.uint8)
    for i, mask in enumerate(masks):
        image[mask] = (image[mask].astype(int) + 40 * (i + 1)) % 255
    return image, np.stack(masks)


def test_plot_point_and_box_sample_write_pngs(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    image, masks = _scene()
    path = plot_point_sample(
        image, masks, np.array([[12, 16], [30, 8]]), np.array([1, 0]), tmp_path / "p.png"
    )
    _assert_png(path)
    float_image = torch.from_numpy(image).permute(2, 0, 1).float()
    path = plot_box_sample(
        float_image, torch.from_numpy(masks), (4, 6, 34, 40), tmp_path / "sub" / "b.png", "box"
    )
    _assert_png(path)
    path = plot_point_sample(
        image / 255.0, masks, np.array([[0, 0]]), np.array([1]), tmp_path / "none.png", "none"
    )
    _assert_png(path)
    assert plt.get_fignums() == before


def test_target_figure_prompts_always_have_targets() -> None:
    image, masks = _scene()
    for seed in range(5):
        prompts = target_figure_prompts(masks, torch.Generator().manual_seed(seed))
        assert list(prompts) == ["point_1pos", "point_1pos_1neg", "point_3pos_2neg", "box"]
        counts = {"point_1pos": (1, 0), "point_1pos_1neg": (1, 1), "point_3pos_2neg": (3, 2)}
        for name, (n_pos, n_neg) in counts.items():
            labels = prompts[name]["labels"]
            assert (labels == 1).sum() == n_pos and (labels == 0).sum() == n_neg
            assert point_sample(masks, prompts[name]["points"], labels).any()
        box, target = prompts["box"]["box"], prompts["box"]["target"]
        cap = 20.0 * max(masks.shape[1:]) / 1024  # the recipe's noise: 20 px of the 1024 px frame
        if target is not None:  # the noisy box of a mask, which box_sample keeps among its 3
            assert np.abs(box - masks_to_boxes(masks)[target]).max() <= cap + 1e-4
            assert any(np.array_equal(m, masks[target]) for m in box_sample(masks, box, include=target))
        assert box_sample(masks, box, include=target).any()


def test_target_figures_writes_four_pngs(tmp_path: Path) -> None:
    image, masks = _scene()
    paths = target_figures(
        image, masks, tmp_path / "figs", torch.Generator().manual_seed(0), prefix="synthetic"
    )
    assert [p.name for p in paths] == [
        "synthetic_point_1pos.png",
        "synthetic_point_1pos_1neg.png",
        "synthetic_point_3pos_2neg.png",
        "synthetic_box.png",
    ]
    for path in paths:
        _assert_png(path)


def _load_sa1b(folder: Path, long_side: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """sa_1.jpg + sa_1.json, resized to ``long_side`` (masks by nearest neighbour)."""
    from pycocotools import mask as mask_utils

    record = json.loads((folder / "sa_1.json").read_text())
    with Image.open(folder / "sa_1.jpg") as img:
        rgb = img.convert("RGB")
        width0, height0 = rgb.size
        scale = long_side / max(height0, width0)
        height, width = round(height0 * scale), round(width0 * scale)
        image = np.asarray(rgb.resize((width, height), Image.BILINEAR))
    rows = np.minimum(((np.arange(height) + 0.5) / scale).astype(int), height0 - 1)
    cols = np.minimum(((np.arange(width) + 0.5) / scale).astype(int), width0 - 1)
    masks = [mask_utils.decode(ann["segmentation"])[rows][:, cols] for ann in record["annotations"]]
    return image, np.stack(masks).astype(bool)


@pytest.mark.skipif(not (SA1B / "sa_1.json").is_file(), reason=f"SA-1B sample not found at {SA1B}")
def test_target_figures_on_real_sa1b_sample(tmp_path: Path) -> None:
    image, masks = _load_sa1b(SA1B)
    assert image.shape[:2] == masks.shape[1:] and max(image.shape[:2]) == 256
    generator = torch.Generator().manual_seed(0)
    prompts = target_figure_prompts(masks, torch.Generator().manual_seed(0))
    for name in ("point_1pos", "point_1pos_1neg", "point_3pos_2neg"):
        assert point_sample(masks, prompts[name]["points"], prompts[name]["labels"]).any()
    paths = target_figures(image, masks, tmp_path, generator, prefix="sa1b")
    assert len(paths) == 4
    for path in paths:
        _assert_png(path, min_bytes=20000)
