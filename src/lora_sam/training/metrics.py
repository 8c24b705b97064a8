"""Interactive-segmentation metrics from per-prompt IoUs (pure, deterministic functions).

SAM has no categories and every mask needs a prompt, so detection metrics such as mAP do not
apply; the interactive segmentation literature scores the IoU reached after k simulated clicks
(mIoU@k) and the number of clicks needed to reach an IoU (NoC@85, NoC@90). The runner that
simulates clicks with a model lives elsewhere and passes its IoUs here. ``InteractiveIoU`` is
the same ``summarize`` as a torchmetrics ``Metric`` that accumulates prompts across batches and
processes.

Inputs may be numpy arrays, torch tensors or nested lists; IoUs are fractions in 0..1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torchmetrics
from torch import Tensor
from torchmetrics.utilities import dim_zero_cat

from lora_sam.settings import MAX_CLICKS

CLICKS = (1, 2, 3, 5, 9)
NOC_THRESHOLDS = (0.85, 0.90)
METRIC_KEYS = (
    *(f"miou@{k}" for k in CLICKS),
    *(f"noc@{round(t * 100)}" for t in NOC_THRESHOLDS),
    "box_miou",
    "box_miou_single",
    "oracle_miou@1",
    "iou_head_mae",
)


def _array(values: Any, name: str, ndim: int | None) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().double().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if ndim is None:
        return array
    if array.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimension(s), got shape {array.shape}")
    if array.shape[0] == 0:
        raise ValueError(f"{name}: no prompts (P = 0)")
    return array


def miou_at_clicks(ious: Any, ks: Sequence[int] = CLICKS) -> dict[int, float]:
    """Mean IoU after k clicks.

    Args:
        ious: (P, C) ``ious[p, c]`` is the IoU of prompt p after c + 1 clicks.
        ks: click counts (1-based).

    Returns:
        {k: mean over p of ious[p, k - 1]}. When a run stopped early (C < k), the last column
        (the IoU after C clicks) stands for click k.
    """
    array = _array(ious, "ious", 2)
    if array.shape[1] == 0:
        raise ValueError("ious: no clicks (C = 0)")
    result = {}
    for k in ks:
        if k < 1:
            raise ValueError(f"ks: click counts start at 1, got {k}")
        result[int(k)] = float(array[:, min(k, array.shape[1]) - 1].mean())
    return result


def number_of_clicks(ious: Any, threshold: float, *, max_clicks: int = MAX_CLICKS) -> np.ndarray:
    """Clicks each prompt needs to reach an IoU of ``threshold`` (NoC).

    Args:
        ious: (P, C) IoU of prompt p after c + 1 clicks; columns past ``max_clicks`` are ignored.
        threshold: IoU to reach, a fraction in (0, 1] (0.85 for NoC@85).
        max_clicks: the click budget.

    Returns:
        (P,) int64, the first 1-based click whose IoU >= threshold, or ``max_clicks`` when it is
        never reached within the budget (the standard NoC convention: a failure costs the whole budget).
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold is a fraction in (0, 1] (0.85 for NoC@85), got {threshold}")
    if max_clicks < 1:
        raise ValueError(f"max_clicks must be >= 1, got {max_clicks}")
    reached = _array(ious, "ious", 2)[:, :max_clicks] >= threshold  # (P, C')
    first = np.argmax(reached, axis=1) + 1
    return np.where(reached.any(axis=1), first, max_clicks).astype(np.int64)


def noc(ious: Any, threshold: float, max_clicks: int = MAX_CLICKS) -> float:
    """Mean number of clicks to reach ``threshold`` over prompts; see :func:`number_of_clicks`."""
    return float(number_of_clicks(ious, threshold, max_clicks=max_clicks).mean())


def iou_head_error(iou_pred: Any, iou_true: Any) -> float:
    """Mean absolute difference between the IoU head's predictions and the true IoUs (same shape)."""
    pred, true = _array(iou_pred, "iou_pred", None), _array(iou_true, "iou_true", None)
    if pred.shape != true.shape or pred.size == 0:
        raise ValueError(
            f"iou_pred {pred.shape} and iou_true {true.shape} must have the same non-empty shape"
        )
    return float(np.abs(pred - true).mean())


def oracle_miou(ious_per_output: Any) -> float:
    """Mean over prompts of the best of the M outputs' IoUs, ``ious_per_output`` (P, M)."""
    return float(_array(ious_per_output, "ious_per_output", 2).max(axis=1).mean())


def box_miou(ious: Any) -> float:
    """Mean IoU of box prompts, ``ious`` (P,)."""
    return float(_array(ious, "ious", 1).mean())


def summarize(
    *,
    click_ious: Any,
    box_ious: Any = None,
    output_ious: Any = None,
    iou_pred: Any = None,
    iou_true: Any = None,
    max_clicks: int = MAX_CLICKS,
    box_ious_single: Any = None,
) -> dict[str, float]:
    """All metrics of one model, keyed as in ``METRIC_KEYS``.

    Args:
        click_ious: (P, C) IoU of point prompt p after c + 1 simulated clicks, C up to ``max_clicks``
            (a run may stop once 0.90 is reached; the last IoU then stands for later clicks).
        box_ious: (Pb,) IoU of each box prompt's mask (the 3 outputs' best-scored);
            ``box_ious_single``: of SAM's single-mask output for the same boxes.
        output_ious: (P, M) IoU of each of the M outputs after the first click (for the oracle).
        iou_pred, iou_true: the IoU head's predictions and the true IoUs of the same outputs
            (any shape, the same for both).
        max_clicks: NoC budget.

    Returns:
        {"miou@1", "miou@2", "miou@3", "miou@5", "miou@9", "noc@85", "noc@90", "box_miou",
        "box_miou_single", "oracle_miou@1", "iou_head_mae"}; a metric whose inputs are not given is NaN.
    """
    result = {f"miou@{k}": v for k, v in miou_at_clicks(click_ious, CLICKS).items()}
    for threshold in NOC_THRESHOLDS:
        result[f"noc@{round(threshold * 100)}"] = noc(click_ious, threshold, max_clicks)
    result["box_miou"] = math.nan if box_ious is None else box_miou(box_ious)
    result["box_miou_single"] = math.nan if box_ious_single is None else box_miou(box_ious_single)
    result["oracle_miou@1"] = math.nan if output_ious is None else oracle_miou(output_ious)
    if (iou_pred is None) != (iou_true is None):
        raise ValueError("give both iou_pred and iou_true, or neither")
    result["iou_head_mae"] = math.nan if iou_pred is None else iou_head_error(iou_pred, iou_true)
    return result


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float | np.floating):
        return "n/a" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def metric_rows(results: Mapping[str, Mapping[str, float]]) -> tuple[list[str], list[list[str]]]:
    """The metrics table as header and rows: one row per model and one column per metric.

    Write it with ``lora_sam.io.markdown_table(*metric_rows(results))``.

    Args:
        results: {model name: {metric: value}}, e.g. ``summarize`` of each model; the columns are
            ``METRIC_KEYS`` present in any row, then other keys in order of first appearance.

    Returns:
        (["model", *columns], [[name, *cells]]): floats with 3 decimals, missing or NaN values "n/a".
    """
    seen = [key for row in results.values() for key in row]
    columns = [k for k in METRIC_KEYS if k in seen] + [k for k in dict.fromkeys(seen) if k not in METRIC_KEYS]
    rows = [[str(name), *(_cell(row.get(k)) for k in columns)] for name, row in results.items()]
    return ["model", *columns], rows


class InteractiveIoU(torchmetrics.Metric):
    """``summarize`` as a stateful torchmetrics ``Metric``: accumulate per-prompt IoUs, then compute.

    Each ``update`` adds P prompts; the states are lists concatenated across updates and, under
    DDP, across processes (``dist_reduce_fx="cat"``), so ``compute()`` equals ``summarize`` of
    all rows at once. Optional inputs must be given in every update or in none.

    Args:
        max_clicks: the NoC budget, as in ``summarize``.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, max_clicks: int = MAX_CLICKS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_clicks = max_clicks
        for name in ("click_ious", "box_ious", "output_ious", "iou_pred", "iou_true"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, click_ious: Tensor, box_ious: Tensor | None = None, output_ious: Tensor | None = None,
               iou_pred: Tensor | None = None, iou_true: Tensor | None = None) -> None:
        """Add prompts: ``click_ious`` (P, C) with the same C in every update; ``box_ious`` (Pb,);
        ``output_ious`` (P, M); ``iou_pred`` and ``iou_true`` of the same shape (any)."""
        if (iou_pred is None) != (iou_true is None):
            raise ValueError("give both iou_pred and iou_true, or neither")
        values = {"click_ious": click_ious, "box_ious": box_ious, "output_ious": output_ious,
                  "iou_pred": None if iou_pred is None else torch.as_tensor(iou_pred).flatten(),
                  "iou_true": None if iou_true is None else torch.as_tensor(iou_true).flatten()}
        for name, value in values.items():
            if value is not None:
                getattr(self, name).append(torch.as_tensor(value, dtype=torch.float64, device=self.device))

    def compute(self) -> dict[str, float]:
        """``summarize`` of every prompt added so far (a metric whose inputs were never given is NaN)."""

        def rows(name: str) -> Tensor | None:
            state = getattr(self, name)
            return None if isinstance(state, list) and not state else dim_zero_cat(state)

        click_ious = rows("click_ious")
        if click_ious is None:
            raise ValueError("InteractiveIoU.compute: no prompts (update was never called)")
        return summarize(click_ious=click_ious, box_ious=rows("box_ious"), output_ious=rows("output_ious"),
                         iou_pred=rows("iou_pred"), iou_true=rows("iou_true"), max_clicks=self.max_clicks)


def mask_iou(pred: Tensor, gt: Tensor) -> Tensor:
    """Intersection over union of binary masks, per mask.

    Args:
        pred: (..., H, W) bool.
        gt: (..., H, W) bool.

    Returns:
        (...) float32 IoU in 0..1; two empty masks have IoU 1.
    """
    pred, gt = pred.bool(), gt.bool()
    intersection = (pred & gt).sum(dim=(-2, -1)).float()
    union = (pred | gt).sum(dim=(-2, -1)).float()
    return torch.where(union > 0, intersection / union.clamp(min=1.0), torch.ones_like(union))
