"""The pure parts of the report: loss curves from metrics.csv, the example-picking rule, the discussion."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lora_sam.report.figures import plot_bars, plot_curves, plot_examples, plot_interactive_rounds
from lora_sam.report.numbers import (
    discussion,
    loss_curves,
    mean_by_area,
    pick_examples,
    read_metrics_csv,
    smooth,
)

METRICS_CSV = """epoch,step,train/dice_step,train/focal_step,train/iou_step,train/loss_step,train/it1/loss_step,\
train/it2/loss_step,train/miou_step,val/dice,val/focal,val/iou,val/loss,train/loss_epoch
0,0,0.9,0.01,0.1,1.2,1.3,1.1,0.05,,,,,
0,1,0.8,0.02,0.2,1.4,1.5,1.3,0.06,,,,,
0,1,,,,,,,,0.7,0.03,0.05,1.35,
0,2,0.7,0.03,0.3,1.6,1.7,1.5,0.07,,,,,
0,3,0.6,0.04,0.4,1.8,1.9,1.7,0.08,,,,,1.5
0,3,,,,,,,,0.5,0.02,0.04,0.94,
"""


@pytest.fixture()
def metrics_csv(tmp_path: Path) -> Path:
    path = tmp_path / "metrics.csv"
    path.write_text(METRICS_CSV)
    return path


def test_read_metrics_csv_keeps_only_filled_cells(metrics_csv: Path) -> None:
    columns = read_metrics_csv(metrics_csv)
    steps, values = columns["train/loss_step"]
    assert steps.tolist() == [0, 1, 2, 3] and values.tolist() == [1.2, 1.4, 1.6, 1.8]
    assert columns["val/loss"][0].tolist() == [1, 3] and columns["val/loss"][1].tolist() == [1.35, 0.94]
    assert columns["train/loss_epoch"][0].tolist() == [3]
    assert "epoch" not in columns and "step" not in columns


def test_read_metrics_csv_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "metrics.csv"
    bad.write_text("epoch,step,train/loss_step\n0,0,1.0\n0,1,oops\n")
    with pytest.raises(ValueError, match=r"metrics\.csv: line 3"):
        read_metrics_csv(bad)
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="no 'step' column"):
        read_metrics_csv(tmp_path / "other.csv")


def test_loss_curves_every_term_train_and_val_and_iterations(metrics_csv: Path) -> None:
    curves = loss_curves(read_metrics_csv(metrics_csv), window=2)
    assert set(curves["train"]) == set(curves["val"]) == {"focal", "dice", "iou", "total"}
    x, y = curves["train"]["total"]
    assert x.tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(y, [1.2, 1.3, 1.5, 1.7])  # trailing mean of 2
    np.testing.assert_allclose(curves["val"]["dice"][1], [0.7, 0.5])  # val is not smoothed
    assert list(curves["iterations"]) == [1, 2]
    np.testing.assert_allclose(curves["iterations"][2][1], [1.1, 1.2, 1.4, 1.6])


def test_smooth_matches_a_loop() -> None:
    values = np.random.default_rng(0).normal(size=37)
    expected = [values[max(0, i - 4): i + 1].mean() for i in range(len(values))]
    np.testing.assert_allclose(smooth(values, 5), expected)
    np.testing.assert_allclose(smooth(values, 1), values)


def test_pick_examples_highest_and_lowest_with_ties_to_the_earlier() -> None:
    ious = [0.5, 0.9, 0.1, 0.9, 0.3, 0.0, 0.7, 0.1]
    best, worst = pick_examples(ious, 3)
    assert best == [1, 3, 6]
    assert worst == [5, 2, 7]


def test_pick_examples_few_prompts_are_not_shared() -> None:
    best, worst = pick_examples([0.2, float("nan"), 0.8], 3)
    assert best == [2, 0] and worst == [1]
    assert pick_examples([0.4], 3) == ([0], [])
    assert pick_examples([], 3) == ([], [])


def test_mean_by_area_groups_by_size() -> None:
    groups = mean_by_area([1.0, 0.0, 0.5, 0.25, 0.75, 0.0], [10, 1, 5, 3, 8, 2], parts=3)
    assert groups == [(1.0, 2.0, 0.0), (3.0, 5.0, 0.375), (8.0, 10.0, 0.875)]
    with pytest.raises(ValueError, match="same shape"):
        mean_by_area([1.0], [1.0, 2.0])


METRICS = {
    "base": {"miou@1": 0.20, "miou@5": 0.30, "noc@90": 18.5, "box_miou": 0.25, "iou_head_mae": 0.30},
    "lora": {"miou@1": 0.35, "miou@5": 0.50, "noc@90": 16.0, "box_miou": 0.40, "iou_head_mae": 0.10},
    "full": {"miou@1": 0.40, "box_miou": 0.45},
    "original": {"miou@1": 0.15},
}
COSTS = {"lora": {"trainable_params": 1000, "weights_bytes": 10 * 1024, "step_time_s": 0.30},
         "full": {"trainable_params": 100_000, "weights_bytes": 1024 * 1024, "step_time_s": 0.40}}


def test_discussion_states_the_measured_numbers() -> None:
    by_area = {"lora": [(1, 10, 0.1), (11, 50, 0.3), (51, 900, 0.6)],
               "original": [(1, 10, 0.05), (11, 50, 0.2), (51, 900, 0.7)]}
    text = "\n".join(discussion(METRICS, costs=COSTS, by_area=by_area, pipeline="SamPredictor"))
    assert "scores 0.200 and the LoRA model 0.350 (+0.150), higher than its step-0 model" in text
    assert "Full fine-tuning reaches mIoU@1 0.400, so LoRA is below it by 0.050" in text
    assert "1,000 parameters instead of 100,000 (1.00 %)" in text and "10.0 KB instead of 1.0 MB (102 times less)" in text
    assert "300 ms against 400 ms" in text and "25 % faster" in text
    assert "scores mIoU@1 0.150, lower than the base" in text and "below LoRA (0.350)" in text
    assert "smallest masks (1-10 px) 0.100 and 0.050 (pipeline -0.050)" in text
    assert "largest (51-900 px) 0.600 and 0.700 (pipeline +0.100)" in text
    assert "base 18.50, LoRA 16.00 (fewer clicks, 2.50)" in text
    assert "from 0.250 (base) to 0.400 (LoRA); full fine-tuning 0.450" in text
    assert "0.300 for the base and 0.100 for LoRA" in text


def test_discussion_says_when_lora_does_not_help_and_skips_what_is_missing() -> None:
    metrics = {"base": {"miou@1": 0.30, "noc@90": None}, "lora": {"miou@1": 0.25, "noc@90": 12.0}}
    sentences = discussion(metrics, pipeline="SamPredictor")
    assert sentences == ["1-click mIoU (mIoU@1): the base (LoRA's step-0 model) scores 0.300 and the LoRA model "
                         "0.250 (-0.050), lower than its step-0 model."]
    assert discussion({"base": {"miou@1": 0.3}}, pipeline="SamPredictor") == []


def test_discussion_numbers_all_come_from_the_inputs() -> None:
    values = [v for row in METRICS.values() for v in row.values()]
    values += [abs(a - b) for a in values for b in values]  # differences between measured numbers
    inputs = {f"{v:.3f}" for v in values} | {f"{v:.2f}" for v in values}
    text = " ".join(discussion(METRICS, pipeline="SamPredictor")).replace("reach IoU 0.90", "")
    for number in re.findall(r"(?<![\d.+-])\d+\.\d+", text):
        assert number in inputs, number


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 3000
    with Image.open(path) as image:
        image.verify()


def test_report_figures_write_pngs(tmp_path: Path) -> None:
    steps = np.arange(10.0)
    _assert_png(plot_curves({"dice": {"LoRA train": (steps, steps / 10), "LoRA val": (steps[::3], steps[::3] / 9)},
                             "focal": {}}, tmp_path / "curves.png", title="t"))
    _assert_png(plot_bars({"mIoU@1": {"base": 0.2, "LoRA": 0.3}, "ms": {"LoRA": 120.0, "full": None}},
                          tmp_path / "bars.png"))
    image = np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8)
    masks = np.zeros((3, 32, 48), dtype=bool)
    masks[0, 4:28, 4:40], masks[1, 8:20, 8:20], masks[2, 10:14, 10:14] = True, True, True
    rounds = [{"points": np.array([[12.0, 12.0]]), "labels": np.array([1]), "gt": masks, "pred": masks[1],
               "target": masks[1]},
              {"points": np.array([[12.0, 12.0], [30.0, 6.0]]), "labels": np.array([1, 0]), "gt": masks,
               "pred": masks[2], "target": masks[1]}]
    _assert_png(plot_interactive_rounds(image, rounds, tmp_path / "rounds.png", title="target"))
    row = {"image": image, "points": np.array([[12.0, 12.0]]), "labels": np.array([1]), "label": "good #1",
           "masks": [masks[1], masks[0], masks[2]], "captions": ["144 px", "IoU 0.17", "IoU 0.11"]}
    _assert_png(plot_examples([row, row], ["GT", "LoRA", "original"], tmp_path / "examples.png"))
    with pytest.raises(ValueError, match="no rows"):
        plot_examples([], ["GT"], tmp_path / "none.png")
