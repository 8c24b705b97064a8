from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from lora_sam.evaluation.protocol import (
    LowResSegmenter,
    PredictorSegmenter,
)
from lora_sam.models.sam_v1.model import build_sam


def _hand_sample(original: tuple[int, int], input_size: tuple[int, int], image: Tensor) -> dict[str, Any]:
    h, w = input_size
    yy, xx = torch.meshgrid(torch.arange(1024.0), torch.arange(1024.0), indexing="ij")
    masks = torch.stack([((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
                         for cx, cy, rx, ry in [(300, 250, 180, 120), (700, 500, 150, 200), (520, 380, 60, 40)]])
    masks[:, h:] = False
    masks[:, :, w:] = False
    frame = torch.zeros(3, 1024, 1024)
    frame[:, :h, :w] = image
    return {"image": frame, "masks": masks, "targets": torch.arange(3), "input_size": torch.tensor([h, w]),
            "original_size": torch.tensor(original), "image_id": "hand"}


@pytest.mark.parametrize("case", ["same_size", "scaled"])
def test_lowres_at_1024_matches_the_predictor(tiny_checkpoint: Path, case: str) -> None:
    sam = build_sam("tiny", tiny_checkpoint, (1024, 1024))
    if case == "same_size":  # the predictor sees the very same pixels: masks must be equal
        image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 768, 1024))).float()
        sample = _hand_sample((768, 1024), (768, 1024), image)
    else:  # a 96x128 original, 8x smaller: prompts and masks are scaled by 8 (constant image: same pixels)
        sample = _hand_sample((96, 128), (768, 1024), torch.full((3, 768, 1024), 120.0))
        sample["original_image"] = np.full((96, 128, 3), 120, dtype=np.uint8)
    low, pred = LowResSegmenter(sam), PredictorSegmenter(sam, source="original" if case == "scaled" else "upscaled")
    low.set_image(sample)
    pred.set_image(sample)
    points = torch.tensor([[[300.0, 250.0], [420.0, 260.0]], [[700.0, 500.0], [640.0, 440.0]]])
    labels = torch.tensor([[1, 0], [1, 1]])
    boxes = torch.tensor([[120.0, 130.0, 480.0, 370.0], [550.0, 300.0, 850.0, 700.0]])
    for prompts in ({"points": points, "labels": labels}, {"boxes": boxes}):
        a, b = low.predict(**prompts), pred.predict(**prompts)
        torch.testing.assert_close(b.low_res, a.low_res, atol=2e-4, rtol=1e-4)
        torch.testing.assert_close(b.iou_pred, a.iou_pred, atol=2e-4, rtol=1e-4)
        if case == "same_size":
            assert torch.equal(a.masks, b.masks)
        else:  # SAM's own upscaling to 96x128, then each training pixel reads the original pixel at its centre
            small = sam.postprocess_masks(a.low_res, (768, 1024), (96, 128)) > 0
            rows, cols = (np.arange(768) + 0.5) * 96 // 768, (np.arange(1024) + 0.5) * 128 // 1024
            expected = torch.zeros_like(b.masks)
            expected[..., :768, :1024] = small[..., rows.astype(int)[:, None], cols.astype(int)[None, :]]
            assert torch.equal(b.masks, expected)
    moved = pred.predict(points=points + torch.tensor([60.0, -40.0]), labels=labels)
    still = low.predict(points=points, labels=labels)
    assert not torch.allclose(moved.low_res, still.low_res, atol=1e-2), "the point position must matter here"


@pytest.mark.parametrize("original", [(333, 517), (517, 333), (101, 99)])
def test_predictor_prompts_map_pixel_centres_to_the_1024_frame(tiny_checkpoint: Path,
                                                               original: tuple[int, int]) -> None:
    from segment_anything.utils.transforms import ResizeLongestSide

    h0, w0 = original
    s = min(96 / h0, 128 / w0)
    h, w = round(h0 * s), round(w0 * s)
    sample = _hand_sample(original, (h, w), torch.zeros(3, h, w))
    sample["original_image"] = np.zeros((h0, w0, 3), dtype=np.uint8)
    pred = PredictorSegmenter(build_sam("tiny", tiny_checkpoint, (1024, 1024)), source="original")
    pred.set_image(sample)
    new_h, new_w = ResizeLongestSide.get_preprocess_shape(h0, w0, 1024)
    xs, ys = torch.meshgrid(torch.arange(w, dtype=torch.float32), torch.arange(h, dtype=torch.float32), indexing="xy")
    points = torch.stack([xs.flatten(), ys.flatten()], dim=1)
    got = pred._to_frame(points)
    # The centre of training pixel (x, y) sits at the same fraction of the image in both frames.
    expected = torch.stack([(points[:, 0] + 0.5) * new_w / w - 0.5, (points[:, 1] + 0.5) * new_h / h - 0.5], dim=1)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5)
    # The corners of the whole image land half a training pixel inside the 1024 px frame's edges.
    corners = pred._to_frame(torch.tensor([[0.0, 0.0], [w - 1.0, h - 1.0]]))
    assert torch.allclose(corners[0], torch.tensor([0.5 * new_w / w - 0.5, 0.5 * new_h / h - 0.5]), atol=1e-4)
    assert torch.allclose(corners[1], torch.tensor([new_w - 0.5 * new_w / w - 0.5, new_h - 0.5 * new_h / h - 0.5]),
                          atol=1e-3)
