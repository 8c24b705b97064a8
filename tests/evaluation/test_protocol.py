from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from lora_sam.data.loaders import open_dataset
from lora_sam.evaluation.protocol import (
    LowResSegmenter,
    evaluate,
    evaluate_image,
    sample_targets,
)
from lora_sam.evaluation.segmenters import Prediction
from lora_sam.models.sam_v1.model import build_sam
from lora_sam.training.metrics import METRIC_KEYS

SIZE = (64, 96)


@pytest.fixture(scope="module")
def samples(synth_root: Path) -> list[dict[str, Any]]:
    dataset = open_dataset(synth_root, image_size=SIZE, masks_per_image=4)
    return [dataset[i] for i in range(2)]


class FixedSegmenter:
    """Answers every prompt with fixed masks built from the sample's targets (no model)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.calls: list[dict[str, Any]] = []

    def set_image(self, sample: dict[str, Any]) -> None:
        self.gt = sample["masks"][sample_targets(sample, use_sample_targets=True)]

    def predict(self, points: Tensor | None = None, labels: Tensor | None = None, boxes: Tensor | None = None,
                mask_input: Tensor | None = None, multimask: bool = True) -> Prediction:
        k = (points if points is not None else boxes).shape[0]
        assert k == len(self.gt), "one call holds every prompt of the image"
        m = 3 if multimask else 1
        call = len(self.calls)
        if self.kind == "oracle":
            masks = self.gt[:, None].expand(k, m, *self.gt.shape[1:])
        elif self.kind == "empty":
            masks = torch.zeros((k, m, *self.gt.shape[1:]), dtype=torch.bool)
        else:  # shifted GT, a different shift per output and call
            masks = torch.stack([torch.roll(self.gt, shifts=(2 + i + call % 3, 3 - i), dims=(1, 2))
                                 for i in range(m)], dim=1)
        iou_pred = torch.tensor([0.2, 0.9, 0.5][:m]).expand(k, m) if multimask else torch.full((k, 1), 0.5)
        low = torch.full((k, m, 4, 4), float(call * 10)) + torch.arange(m, dtype=torch.float)[None, :, None, None]
        self.calls.append({"points": points, "labels": labels, "boxes": boxes, "mask_input": mask_input,
                           "multimask": multimask})
        return Prediction(masks=masks.clone(), iou_pred=iou_pred.clone(), low_res=low)


def test_oracle_segmenter_scores_perfectly(samples: list[dict[str, Any]]) -> None:
    result = evaluate(FixedSegmenter("oracle"), samples, max_clicks=4, use_sample_targets=True, progress=False)
    metrics = result["metrics"]
    assert set(metrics) == set(METRIC_KEYS)
    assert all(metrics[f"miou@{k}"] == 1.0 for k in (1, 2, 3, 5, 9))
    assert metrics["noc@85"] == 1.0 and metrics["noc@90"] == 1.0
    assert metrics["box_miou"] == 1.0 and metrics["oracle_miou@1"] == 1.0
    assert metrics["iou_head_mae"] == pytest.approx(np.mean([0.8, 0.1, 0.5]), abs=1e-6)
    assert result["prompt_count"] == sum(len(s["targets"]) for s in samples)
    assert all(label == -1 for row in result["prompts"]["click_labels"] for label in row[1:])


def test_empty_segmenter_needs_the_whole_budget(samples: list[dict[str, Any]]) -> None:
    result = evaluate(FixedSegmenter("empty"), samples, max_clicks=5, use_sample_targets=True, progress=False)
    metrics = result["metrics"]
    assert metrics["noc@85"] == 5 and metrics["noc@90"] == 5
    assert metrics["miou@1"] == 0.0 and metrics["box_miou"] == 0.0
    assert metrics["iou_head_mae"] == pytest.approx(np.mean([0.2, 0.9, 0.5]), abs=1e-6)
    assert all(row == [1] * 5 for row in result["prompts"]["click_labels"])
    json.dumps(result)


def test_clicks_lie_in_the_error_region_and_logits_are_fed_back(samples: list[dict[str, Any]]) -> None:
    sample = samples[0]
    segmenter = FixedSegmenter("shifted")
    targets = sample_targets(sample, use_sample_targets=True)
    out = evaluate_image(segmenter, sample, targets, max_clicks=6, keep_masks=True, refine="single")
    gt = sample["masks"][targets]
    points, labels, kept = out["click_points"].long(), out["click_labels"], out["click_masks"]
    rows = torch.arange(len(targets))
    assert gt[rows, points[:, 0, 1], points[:, 0, 0]].all() and (labels[:, 0] == 1).all()
    for c in range(1, 6):
        x, y = points[:, c, 0], points[:, c, 1]
        error = kept[:, c - 1] ^ gt
        assert error[rows, y, x].all(), f"click {c + 1} outside the error region"
        assert torch.equal(labels[:, c], gt[rows, y, x].long())
        assert torch.equal(out["click_ious"][:, c - 1],
                           (kept[:, c - 1] & gt).flatten(1).sum(1) / (kept[:, c - 1] | gt).flatten(1).sum(1))
    calls = segmenter.calls
    assert calls[0]["multimask"] and calls[0]["mask_input"] is None
    assert torch.equal(kept[:, 0], torch.roll(gt, shifts=(2 + 1, 3 - 1), dims=(1, 2)))  # highest iou_pred
    assert (calls[1]["mask_input"] == 0 * 10 + 1).all(), "the first click's best output is fed back"
    assert all(not c["multimask"] and (c["mask_input"] == (i - 1) * 10).all() for i, c in enumerate(calls[2:6], 2))
    assert calls[6]["boxes"] is not None and calls[6]["mask_input"] is None
    assert out["click_ious"].shape == (len(targets), 6) and out["output_ious"].shape == (len(targets), 3)


def test_default_protocol_follows_the_training_rule_and_never_clicks_a_pixel_twice(
    samples: list[dict[str, Any]], tiny_checkpoint: Path
) -> None:
    segmenter = FixedSegmenter("shifted")
    sample = samples[0]
    targets = sample_targets(sample, use_sample_targets=True)
    evaluate_image(segmenter, sample, targets, max_clicks=4)
    calls = segmenter.calls
    assert calls[0]["multimask"] and not any(c["multimask"] for c in calls[1:4])  # later clicks: single output
    assert calls[4]["boxes"] is not None and calls[4]["multimask"]  # the box: 3 outputs, as trained
    # A real model that stops improving: no (target, pixel) is clicked twice in 12 clicks.
    real = LowResSegmenter(build_sam("tiny", tiny_checkpoint, SIZE))
    out = evaluate_image(real, sample, targets, max_clicks=12, keep_masks=True)
    for k in range(len(targets)):
        clicked = [tuple(p) for p, label in zip(out["click_points"][k].long().tolist(), out["click_labels"][k].tolist())
                   if label >= 0]
        assert len(clicked) == len(set(clicked))
    # The 3 first-click outputs are reported big to small by area, each with the token that made it.
    again = real.predict(points=out["click_points"][:, :1], labels=out["click_labels"][:, :1], multimask=True)
    areas = again.masks.flatten(2).sum(2)
    tokens = out["output_tokens"]
    assert all(sorted(row.tolist()) == [0, 1, 2] for row in tokens)
    assert (areas.gather(1, tokens).diff(dim=1) <= 0).all()
    assert torch.allclose(out["iou_pred"], again.iou_pred.gather(1, tokens), atol=1e-5)


def test_refine_multi_keeps_the_highest_predicted_iou(samples: list[dict[str, Any]]) -> None:
    segmenter = FixedSegmenter("shifted")
    sample = samples[1]
    evaluate_image(segmenter, sample, sample_targets(sample, use_sample_targets=True), max_clicks=3, refine="multi")
    assert all(call["multimask"] for call in segmenter.calls[:-1])  # clicks and the box's 3 outputs
    assert not segmenter.calls[-1]["multimask"]  # the box's single output (box_miou_single)
    assert [float(c["mask_input"].flatten()[0]) for c in segmenter.calls[1:3]] == [1.0, 11.0]


def test_evaluation_is_deterministic(samples: list[dict[str, Any]], tiny_checkpoint: Path) -> None:
    segmenter = LowResSegmenter(build_sam("tiny", tiny_checkpoint, SIZE))
    first = evaluate(segmenter, samples[:1], max_clicks=3, masks_per_image=3, seed=4, progress=False)
    again = evaluate(segmenter, samples[:1], max_clicks=3, masks_per_image=3, seed=4, progress=False)
    assert json.dumps(first["prompts"]) == json.dumps(again["prompts"]) and first["metrics"] == again["metrics"]
    assert first["prompts"]["mask_index"] == sample_targets(samples[0], masks_per_image=3, seed=4).tolist()


def test_masks_per_image_is_deterministic(samples: list[dict[str, Any]]) -> None:
    first = [sample_targets(s, masks_per_image=3, seed=5).tolist() for s in samples]
    again = [sample_targets(s, masks_per_image=3, seed=5).tolist() for s in samples]
    assert first == again and all(len(t) == 3 for t in first)
    assert sample_targets(samples[0]).tolist() == list(range(len(samples[0]["masks"])))
