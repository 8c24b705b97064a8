"""report.figures: the training and evaluation figures write readable PNGs of the expected layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lora_sam.report.figures import plot_bars, plot_curves, plot_interactive_rounds


def _png(path: Path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 2000
    return np.asarray(Image.open(path))


def test_interactive_rounds_show_three_gt_masks_then_the_target(tmp_path: Path) -> None:
    h, w = 40, 60
    target = torch.zeros(h, w, dtype=torch.bool)
    target[10:30, 15:45] = True
    part = torch.zeros_like(target)
    part[12:20, 18:30] = True
    sub = torch.zeros_like(target)
    sub[14:17, 20:24] = True
    image = torch.rand(3, h, w) * 255
    rounds = [{"points": torch.tensor([[30.0, 20.0]]), "labels": torch.tensor([1]),
               "gt": torch.stack([target, part, sub]), "pred": part, "target": target,
               "paired": torch.tensor([2, 1, 0])},
              {"points": torch.tensor([[30.0, 20.0], [40.0, 25.0]]), "labels": torch.tensor([1, 1]),
               "gt": target[None], "pred": target, "target": target, "paired": torch.tensor([-1])}]
    two = _png(plot_interactive_rounds(image, rounds, tmp_path / "rounds.png", title="t"))
    one = _png(plot_interactive_rounds(image, rounds[:1], tmp_path / "one.png"))
    assert two.shape[0] > 1.5 * one.shape[0]  # a row per iteration
    assert two.shape[1] == one.shape[1]


def test_curves_and_bars(tmp_path: Path) -> None:
    steps = np.arange(20.0)
    panels = {"total": {"LoRA train": (steps, np.exp(-steps / 5)), "full train": (steps, np.exp(-steps / 3))}}
    _png(plot_curves(panels, tmp_path / "curves.png", title="loss"))
    _png(plot_bars({"mIoU@1": {"LoRA": 0.5, "full": 0.6, "base": None}}, tmp_path / "bars.png", title="bars"))


def test_interactive_rounds_crop_to_the_target_with_the_frame_as_inset(tmp_path: Path) -> None:
    """A target of a few dozen pixels in a 160x256 frame: the panels show a window around it and its
    points (at least 48 px, the target's size again on each side), and the first panel of each row an
    inset with the whole frame; a target filling the frame keeps the whole frame and no inset."""
    from lora_sam.report.figures import _window

    h, w = 160, 256
    target = torch.zeros(h, w, dtype=torch.bool)
    target[100:106, 200:210] = True
    rnd = {"points": torch.tensor([[204.0, 102.0]]), "labels": torch.tensor([1]), "gt": target[None],
           "pred": target, "target": target}
    x0, x1, y0, y1 = _window([rnd], (h, w))
    assert x0 <= 200 and x1 >= 210 and y0 <= 100 and y1 >= 106  # the target inside
    assert x1 - x0 >= 48 and y1 - y0 >= 48 and (x1 - x0) < w / 2 and (y1 - y0) < h / 2  # a crop
    full = torch.ones(h, w, dtype=torch.bool)
    assert _window([{**rnd, "target": full}], (h, w)) == (0, w, 0, h)
    path = plot_interactive_rounds(torch.rand(3, h, w) * 255, [rnd], tmp_path / "crop.png")
    assert _png(path).shape[0] > 100
