"""promptable.PromptableModel and its SAM v1 implementation, against the official ``Sam.forward``."""

from __future__ import annotations

from pathlib import Path

import torch

from lora_sam.models.promptable import PromptableModel
from lora_sam.models.sam_v1.model import SamV1, build_sam


def test_sam_v1_is_a_promptable_model_and_matches_the_official_forward(tiny_checkpoint: Path) -> None:
    sam = build_sam("tiny", tiny_checkpoint, (1024, 1024))
    model = SamV1(sam)
    assert isinstance(model, PromptableModel)
    assert model.low_res_size == (256, 256)
    torch.manual_seed(0)
    image = torch.rand(1, 3, 1024, 1024) * 255
    points, labels = torch.tensor([[[400.0, 300.0], [600.0, 500.0]]]), torch.tensor([[1, 0]])
    box = torch.tensor([[100.0, 120.0, 700.0, 800.0]])
    with torch.no_grad():
        official = sam([{"image": image[0], "original_size": (1024, 1024), "point_coords": points,
                         "point_labels": labels, "boxes": box}], multimask_output=True)[0]
        embedding = model.encode(image)
        low, iou = model.decode(embedding, points=points, labels=labels, boxes=box, multimask=True)
        single, _ = model.decode(embedding, points=points, labels=labels, boxes=box, multimask=False)
    torch.testing.assert_close(low, official["low_res_logits"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(iou, official["iou_predictions"], atol=1e-5, rtol=1e-4)
    assert single.shape == (1, 1, 256, 256)
    up = model.upscale(low, (1024, 1024))
    torch.testing.assert_close(up, sam.postprocess_masks(low, (1024, 1024), (1024, 1024)), atol=1e-4, rtol=1e-4)
