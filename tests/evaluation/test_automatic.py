"""Automatic masks in the evaluation: the generator's masks on the training grid, ranked, and AR in eval.json."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lora_sam.evaluation.automatic import automatic_masks
from lora_sam.evaluation.options import EvalModels, EvalOptions
from lora_sam.evaluation.proposals import average_recall


class FixedGenerator:
    """Records as SamAutomaticMaskGenerator writes them, in a shuffled score order."""

    def __init__(self, masks: np.ndarray, scores: list[float]) -> None:
        self.masks, self.scores = masks, scores

    def generate(self, image: np.ndarray) -> list[dict]:
        assert image.dtype == np.uint8 and image.shape[:2] == self.masks.shape[1:]
        return [{"segmentation": m, "predicted_iou": s} for m, s in zip(self.masks, self.scores)]


def test_automatic_masks_are_ranked_and_resized_on_the_ground_truths_grid() -> None:
    """Masks at the original size (30 x 45) come back best-first on the (20, 30) image inside a (32, 48)
    frame, each training pixel taking the original pixel the nearest-neighbour resize of the GT takes."""
    from lora_sam.data.rle import nearest_grid

    rng = np.random.default_rng(0)
    masks = rng.random((3, 30, 45)) > 0.5
    sample = {"image": torch.zeros(3, 32, 48), "input_size": torch.tensor([20, 30]),
              "original_size": torch.tensor([30, 45])}
    got, scores = automatic_masks(FixedGenerator(masks, [0.2, 0.9, 0.5]), sample, "upscaled")
    assert scores.tolist() == [0.9, 0.5, 0.2]
    rows, cols = nearest_grid(30, 20), nearest_grid(45, 30)
    for rank, index in enumerate([1, 2, 0]):
        want = np.zeros((32, 48), dtype=bool)
        for y in range(20):
            for x in range(30):
                want[y, x] = masks[index, rows[y], cols[x]]
        assert np.array_equal(got[rank].numpy(), want)


@pytest.mark.slow
def test_eval_automatic_adds_proposal_recall_to_the_1024_px_rows(tmp_path: Path, synthetic_root: Path) -> None:
    from lora_sam.evaluation.run import evaluate_models
    from lora_sam.models.sam_v1.model import builtin_checkpoint

    models = EvalModels("tiny", str(builtin_checkpoint("tiny")), (64, 96))
    report = evaluate_models(synthetic_root, tmp_path, models,
                             EvalOptions(max_images=1, max_clicks=2, masks_per_image=2, automatic=True,
                                         automatic_points=4), device="cpu", progress=False)
    rows = report["models"]
    assert "ar@100" not in rows["base"]["metrics"]  # the low-resolution row has no automatic masks
    original = rows["original-1024"]
    assert 0.0 <= original["metrics"]["ar@100"] <= original["metrics"]["ar@1000"] <= 1.0
    assert 0 < original["automatic"]["proposals_per_image"] <= 4 * 4 * 3  # one prompt per grid point, 3 masks each
    assert "ar@100" in (tmp_path / "eval.md").read_text()


def test_average_recall_of_perfect_proposals_is_one() -> None:
    gt = np.zeros((2, 8, 8), dtype=bool)
    gt[0, :4], gt[1, 4:] = True, True
    assert average_recall(gt, gt) == {100: 1.0, 1000: 1.0}
