from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from lora_sam.adapter import save_adapter
from lora_sam.cli import main
from lora_sam.data.loaders import open_dataset
from lora_sam.data.synth import make_synthetic
from lora_sam.evaluation.protocol import (
    LowResSegmenter,
    PredictorSegmenter,
    evaluate,
    evaluate_image,
    sample_targets,
)
from lora_sam.evaluation.segmenters import Prediction
from lora_sam.lora import inject_lora, lora_layers
from lora_sam.metrics import METRIC_KEYS
from lora_sam.model import build_sam

SIZE = (64, 96)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    make_synthetic(root, 3, image_size=(96, 128), seed=1)
    return root


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
    assert all(call["multimask"] for call in segmenter.calls)
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


def _adapter(tmp_path: Path, checkpoint: Path, **meta: Any) -> Path:
    sam = build_sam("tiny", checkpoint, SIZE)
    inject_lora(sam, 2, 2.0, targets="decoder")
    torch.manual_seed(1)
    for layer in lora_layers(sam).values():
        torch.nn.init.normal_(layer.lora_B, std=0.05)
    path = tmp_path / "adapter.safetensors"
    save_adapter(sam, path, targets="decoder", **{"model_type": "tiny", "image_size": SIZE, **meta})
    return path


def test_eval_cli_writes_json_and_markdown(tmp_path: Path, synth_root: Path, tiny_checkpoint: Path) -> None:
    adapter = _adapter(tmp_path, tiny_checkpoint)
    full = build_sam("tiny", tiny_checkpoint, SIZE)
    with torch.no_grad():
        full.mask_decoder.iou_prediction_head.layers[-1].bias.add_(0.3)
    torch.save(full.state_dict(), tmp_path / "model.pth")
    out = tmp_path / "eval"
    rc = main(["eval", "--data", str(synth_root), "--split", "all", "--model-type", "tiny", "--checkpoint",
               str(tiny_checkpoint), "--image-size", *map(str, SIZE), "--adapter", str(adapter), "--full",
               str(tmp_path / "model.pth"), "--original", "--max-images", "1", "--masks-per-image", "3",
               "--max-clicks", "3", "--out", str(out), "--quiet"])
    assert rc == 0
    report = json.loads((out / "eval.json").read_text())
    names = ["base", "lora:adapter", "full:model", "original-1024", "original-1024:full-res"]
    assert list(report["models"]) == names
    table = (out / "eval.md").read_text()
    for name in names:
        entry = report["models"][name]
        assert f"| {name} |" in table
        assert set(entry["metrics"]) == set(METRIC_KEYS)
        assert entry["prompt_count"] == 3 and entry["images"] == 1
        assert np.asarray(entry["prompts"]["click_ious"]).shape == (3, 3)
        assert np.asarray(entry["prompts"]["click_points"]).shape == (3, 3, 2)
    base, full_entry = report["models"]["base"], report["models"]["full:model"]
    assert base["prompts"]["click_ious"] == full_entry["prompts"]["click_ious"]  # only the IoU head changed
    assert base["metrics"]["iou_head_mae"] != full_entry["metrics"]["iou_head_mae"]
    assert report["models"]["original-1024"]["input"] == "training image upscaled"


def test_eval_cli_names_the_adapter_that_does_not_fit(tmp_path: Path, synth_root: Path, tiny_checkpoint: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    wrong = _adapter(tmp_path, tiny_checkpoint, model_type="vit_b")
    args = ["eval", "--data", str(synth_root), "--split", "all", "--model-type", "tiny", "--checkpoint",
            str(tiny_checkpoint), "--image-size", *map(str, SIZE), "--out", str(tmp_path / "out"), "--quiet"]
    assert main([*args, "--adapter", str(wrong)]) == 2
    assert str(wrong) in capsys.readouterr().err
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    assert main([*args, "--adapter", str(broken)]) == 2
    assert str(broken) in capsys.readouterr().err


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
