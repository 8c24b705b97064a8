from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from lora_sam.io import markdown_table
from lora_sam.training.metrics import (
    METRIC_KEYS,
    InteractiveIoU,
    box_miou,
    iou_head_error,
    metric_rows,
    miou_at_clicks,
    noc,
    number_of_clicks,
    oracle_miou,
    summarize,
)

# Rows: prompt p; columns: IoU after 1, 2, 3, 4 clicks.
CLICK_IOUS = [
    [0.95, 0.96, 0.97, 0.97],  # reaches 0.85 and 0.90 at the first click
    [0.40, 0.70, 0.86, 0.91],  # 0.85 at click 3, 0.90 at click 4
    [0.10, 0.20, 0.30, 0.40],  # never reaches either
    [0.88, 0.84, 0.90, 0.95],  # 0.85 at click 1, 0.90 at click 3
]


def _noc_reference(rows: list[list[float]], threshold: float, max_clicks: int) -> list[int]:
    counts = []
    for row in rows:
        count = max_clicks
        for click, value in enumerate(row[:max_clicks], start=1):
            if value >= threshold:
                count = click
                break
        counts.append(count)
    return counts


def _miou_reference(rows: list[list[float]], k: int) -> float:
    total = 0.0
    for row in rows:
        total += row[k - 1] if k <= len(row) else row[-1]
    return total / len(rows)


def test_miou_at_clicks_matches_loop() -> None:
    got = miou_at_clicks(np.array(CLICK_IOUS))
    assert list(got) == [1, 2, 3, 5, 9]
    for k, value in got.items():
        assert value == pytest.approx(_miou_reference(CLICK_IOUS, k))
    assert got[1] == pytest.approx((0.95 + 0.40 + 0.10 + 0.88) / 4)
    assert got[9] == got[5] == pytest.approx((0.97 + 0.91 + 0.40 + 0.95) / 4)


def test_miou_accepts_torch_and_custom_ks() -> None:
    got = miou_at_clicks(torch.tensor(CLICK_IOUS), ks=(2, 4))
    assert got == {
        2: pytest.approx(_miou_reference(CLICK_IOUS, 2)),
        4: pytest.approx(_miou_reference(CLICK_IOUS, 4)),
    }


@pytest.mark.parametrize("threshold", [0.85, 0.90, 0.99, 0.05])
@pytest.mark.parametrize("max_clicks", [20, 3, 1])
def test_number_of_clicks_matches_loop(threshold: float, max_clicks: int) -> None:
    got = number_of_clicks(np.array(CLICK_IOUS), threshold, max_clicks=max_clicks)
    assert got.dtype == np.int64
    assert got.tolist() == _noc_reference(CLICK_IOUS, threshold, max_clicks)
    assert noc(CLICK_IOUS, threshold, max_clicks) == pytest.approx(
        np.mean(_noc_reference(CLICK_IOUS, threshold, max_clicks))
    )


def test_noc_edge_cases() -> None:
    assert number_of_clicks(CLICK_IOUS, 0.85).tolist() == [1, 3, 20, 1]
    assert number_of_clicks(CLICK_IOUS, 0.90).tolist() == [1, 4, 20, 3]
    assert noc([[0.2, 0.3]], 0.9, max_clicks=20) == 20.0
    assert noc([[0.9, 0.1]], 0.9) == 1.0
    assert noc([[0.5, 0.95]], 0.9, max_clicks=1) == 1.0  # budget of one click, not reached: 1


def test_iou_head_error_matches_loop() -> None:
    pred = [[0.9, 0.5, 0.2], [1.01, 0.0, 0.7]]
    true = [[0.8, 0.6, 0.2], [0.95, 0.3, 0.1]]
    want = sum(abs(p - t) for rp, rt in zip(pred, true) for p, t in zip(rp, rt)) / 6
    assert iou_head_error(pred, true) == pytest.approx(want)
    assert iou_head_error(torch.tensor(pred, dtype=torch.bfloat16), torch.tensor(pred)) == pytest.approx(
        0.0, abs=0.01
    )
    with pytest.raises(ValueError):
        iou_head_error([0.1, 0.2], [0.1])


def test_oracle_and_box_miou_match_loops() -> None:
    outputs = [[0.2, 0.9, 0.5], [0.7, 0.1, 0.3], [0.0, 0.0, 0.0]]
    assert oracle_miou(outputs) == pytest.approx(sum(max(row) for row in outputs) / len(outputs))
    boxes = [0.8, 0.6, 0.95]
    assert box_miou(torch.tensor(boxes)) == pytest.approx(sum(boxes) / 3)


@pytest.mark.parametrize(
    ("call", "args"),
    [
        (miou_at_clicks, ([],)),
        (miou_at_clicks, ([0.5, 0.6],)),
        (number_of_clicks, (CLICK_IOUS, 85)),
        (oracle_miou, (np.zeros((0, 3)),)),
        (box_miou, ([[0.5]],)),
    ],
)
def test_rejects_bad_inputs(call: Callable[..., object], args: tuple) -> None:
    with pytest.raises(ValueError):
        call(*args)


def test_summarize_builds_every_key() -> None:
    outputs = [[0.95, 0.5, 0.1], [0.2, 0.4, 0.6], [0.1, 0.1, 0.1], [0.88, 0.9, 0.3]]
    got = summarize(
        click_ious=CLICK_IOUS,
        box_ious=[0.5, 0.7],
        output_ious=outputs,
        iou_pred=[0.9, 0.4],
        iou_true=[0.8, 0.6],
    )
    assert tuple(got) == METRIC_KEYS
    assert got["miou@3"] == pytest.approx(_miou_reference(CLICK_IOUS, 3))
    assert got["noc@85"] == pytest.approx((1 + 3 + 20 + 1) / 4)
    assert got["noc@90"] == pytest.approx((1 + 4 + 20 + 3) / 4)
    assert got["box_miou"] == pytest.approx(0.6)
    assert got["oracle_miou@1"] == pytest.approx((0.95 + 0.6 + 0.1 + 0.9) / 4)
    assert got["iou_head_mae"] == pytest.approx(0.15)
    assert all(isinstance(v, float) for v in got.values())


def test_summarize_missing_inputs_are_nan() -> None:
    got = summarize(click_ious=CLICK_IOUS)
    assert (
        math.isnan(got["box_miou"]) and math.isnan(got["oracle_miou@1"]) and math.isnan(got["iou_head_mae"])
    )
    with pytest.raises(ValueError):
        summarize(click_ious=CLICK_IOUS, iou_pred=[0.5])


def test_metric_rows_as_a_markdown_table() -> None:
    results = {
        "base": {"miou@1": 0.5, "noc@85": 12.25, "box_miou": math.nan},
        "lo|ra": {"noc@85": 8.0, "miou@1": 0.61234, "extra": 3.0},
    }
    lines = markdown_table(*metric_rows(results)).splitlines()
    assert lines[0] == "| model | miou@1 | noc@85 | box_miou | extra |"
    assert lines[1] == "|---|---:|---:|---:|---:|"
    assert lines[2] == "| base | 0.500 | 12.250 | n/a | n/a |"
    assert lines[3] == "| lo\\|ra | 0.612 | 8.000 | n/a | 3.000 |"
    assert len(lines) == 4


def _metric_inputs(seed: int, prompts: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"click_ious": torch.rand(prompts, 6, generator=g), "box_ious": torch.rand(prompts, generator=g),
            "output_ious": torch.rand(prompts, 3, generator=g), "iou_pred": torch.rand(prompts, 3, generator=g),
            "iou_true": torch.rand(prompts, 3, generator=g)}


def _assert_same_metrics(got: dict[str, float], want: dict[str, float]) -> None:
    assert got.keys() == want.keys() == set(METRIC_KEYS)
    for key in METRIC_KEYS:
        assert got[key] == pytest.approx(want[key], rel=1e-12, nan_ok=True), key


def test_interactive_iou_metric_computes_summarize() -> None:
    inputs = _metric_inputs(0, 7)
    metric = InteractiveIoU(max_clicks=6)
    metric.update(**inputs)
    _assert_same_metrics(metric.compute(), summarize(**inputs, max_clicks=6))
    metric.reset()
    metric.update(click_ious=torch.tensor(CLICK_IOUS, dtype=torch.float64))  # optional inputs left out: NaN, as in summarize
    _assert_same_metrics(metric.compute(), summarize(click_ious=CLICK_IOUS, max_clicks=6))
    with pytest.raises(ValueError), pytest.warns(UserWarning, match="before the ``update``"):
        InteractiveIoU().compute()


def test_interactive_iou_two_updates_equal_one_concatenated_update() -> None:
    first, second = _metric_inputs(1, 3), _metric_inputs(2, 5)
    twice = InteractiveIoU(max_clicks=6)
    twice.update(**first)
    twice.update(**second)
    once = InteractiveIoU(max_clicks=6)
    once.update(**{k: torch.cat([first[k], second[k]]) for k in first})
    _assert_same_metrics(twice.compute(), once.compute())
    merged = InteractiveIoU(max_clicks=6)
    merged.update(**first)
    other = InteractiveIoU(max_clicks=6)
    other.update(**second)
    merged.merge_state(other)  # what a DDP sync does with the "cat" states
    _assert_same_metrics(merged.compute(), once.compute())
