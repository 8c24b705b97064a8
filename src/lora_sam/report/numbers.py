"""The pure parts of the report: loss curves from ``metrics.csv``, the example-picking rule, the cost
table of LoRA vs full fine-tuning, the discussion.

Nothing here reads models or draws; inputs are the run's logged numbers, so each function can
be checked on hand-written values.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lora_sam.io import format_bytes, markdown_table

__all__ = [
    "LOSS_COLUMNS",
    "Series",
    "cost_note",
    "cost_table",
    "discussion",
    "loss_curves",
    "mean_by_area",
    "pick_examples",
    "read_metrics_csv",
    "smooth",
]

Series = tuple[np.ndarray, np.ndarray]
"""(steps, values), both (T,)."""

LOSS_COLUMNS: dict[str, tuple[str, str]] = {
    "focal": ("train/focal_step", "val/focal"),
    "dice": ("train/dice_step", "val/dice"),
    "iou": ("train/iou_step", "val/iou"),
    "total": ("train/loss_step", "val/loss"),
}
"""Loss term -> (train column, val column) of a Lightning CSVLogger ``metrics.csv`` of ``LoRASAM``."""


def read_metrics_csv(path: str | os.PathLike) -> dict[str, Series]:
    """Every column of a Lightning ``metrics.csv`` as (steps, values), empty cells left out.

    Raises:
        ValueError: the file has no ``step`` column, or a cell is not a number (file, line, column named).
    """
    path = Path(path)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "step" not in reader.fieldnames:
            raise ValueError(f"{path}: no 'step' column (not a Lightning CSVLogger metrics.csv)")
        points: dict[str, list[tuple[float, float]]] = {}
        for line, row in enumerate(reader, start=2):
            try:
                step = float(row["step"])
                for key, cell in row.items():
                    if key not in ("step", "epoch") and cell not in (None, ""):
                        points.setdefault(key, []).append((step, float(cell)))
            except ValueError as err:
                raise ValueError(f"{path}: line {line}: {err}") from err
    return {key: (np.array([s for s, _ in v]), np.array([x for _, x in v])) for key, v in points.items()}


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over up to ``window`` values (the first values average what exists)."""
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or values.size == 0:
        return values
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    ends = np.arange(1, values.size + 1)
    starts = np.maximum(ends - window, 0)
    return (cumulative[ends] - cumulative[starts]) / (ends - starts)


def loss_curves(columns: Mapping[str, Series], *, window: int | None = None) -> dict[str, dict[Any, Series]]:
    """Train and val curves of each loss term, and the train loss of each interactive iteration.

    Args:
        columns: ``read_metrics_csv`` output.
        window: moving-average window of the train (per-step) curves; default about 1/20 of the steps.

    Returns:
        {"train": {term: series}, "val": {term: series}, "iterations": {n: series}} with terms
        ``focal``, ``dice``, ``iou``, ``total`` where logged; train series are smoothed, val series
        (one point per validation) are not.
    """
    out: dict[str, dict[Any, Series]] = {"train": {}, "val": {}, "iterations": {}}
    steps = max((len(columns[c][0]) for c, _ in LOSS_COLUMNS.values() if c in columns), default=0)
    window = window or max(1, steps // 20)
    for term, (train, val) in LOSS_COLUMNS.items():
        if train in columns:
            x, y = columns[train]
            out["train"][term] = (x, smooth(y, window))
        if val in columns:
            out["val"][term] = columns[val]
    for key, (x, y) in columns.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "train" and parts[1].startswith("it") and parts[2] == "loss_step":
            if parts[1][2:].isdigit():
                out["iterations"][int(parts[1][2:])] = (x, smooth(y, window))
    out["iterations"] = dict(sorted(out["iterations"].items()))
    return out


def pick_examples(ious: Sequence[float] | np.ndarray, count: int = 3) -> tuple[list[int], list[int]]:
    """The rule for good and bad examples: the ``count`` highest and the ``count`` lowest IoUs.

    Ties go to the earlier prompt; NaN counts as lowest. With fewer than ``2 * count`` prompts the
    two lists share no prompt: the best take the top half (rounded up), the worst the rest.

    Returns:
        (best indices, highest first; worst indices, lowest first).
    """
    values = np.nan_to_num(np.asarray(ious, dtype=np.float64), nan=-np.inf)
    order = np.lexsort((np.arange(values.size), -values))  # descending IoU, then index
    n_best = min(count, (values.size + 1) // 2)
    n_worst = min(count, values.size - n_best)
    best = order[:n_best].tolist()
    ascending = np.lexsort((np.arange(values.size), values))
    worst = [i for i in ascending.tolist() if i not in best][:n_worst]
    return best, worst


def mean_by_area(values: Sequence[float], areas: Sequence[float], parts: int = 3) -> list[tuple[float, float, float]]:
    """Mean of ``values`` in ``parts`` groups of prompts of increasing mask area (equal counts).

    Returns:
        [(smallest area, largest area, mean value)] per group, small masks first; empty groups left out.
    """
    v, a = np.asarray(values, dtype=np.float64), np.asarray(areas, dtype=np.float64)
    if v.shape != a.shape:
        raise ValueError(f"values {v.shape} and areas {a.shape} must have the same shape")
    order = np.argsort(a, kind="stable")
    return [(float(a[g].min()), float(a[g].max()), float(np.nanmean(v[g])))
            for g in np.array_split(order, parts) if g.size]


def _num(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _trainable(run: Mapping[str, Any]) -> str:
    count = f"{run['trainable_params']:,}"
    if not run.get("total_params"):
        return count
    return f"{count} ({100 * run['trainable_params'] / run['total_params']:.2f} % of {run['total_params']:,})"


def _step_time(run: Mapping[str, Any]) -> str:
    return "n/a" if run.get("step_time_s") is None else f"{run['step_time_s'] * 1000:.1f} ms"


_COST_ROWS: tuple[tuple[str, Callable[[Mapping[str, Any]], str]], ...] = (
    ("trainable parameters", _trainable),
    ("time per training step", _step_time),
    ("peak memory", lambda r: format_bytes(r["memory"].get("peak_bytes"))),
    ("memory added by training", lambda r: format_bytes(r["memory"].get("growth_bytes"))),
    ("weights file", lambda r: f"{Path(r['weights_file']).name}, {format_bytes(r['weights_bytes'])}"),
    ("Lightning checkpoint", lambda r: format_bytes(r["checkpoint_bytes"])),
    ("training time", lambda r: f"{r['train_seconds']:.1f} s"),
)


def cost_table(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """What LoRA and full fine-tuning each cost, as a Markdown table with a column per mode.

    Args:
        runs: ``compare.json``'s ``"runs"``: {"lora" | "full": {"trainable_params", "total_params",
            "step_time_s", "memory": {"peak_bytes", "growth_bytes"}, "weights_file", "weights_bytes",
            "checkpoint_bytes", "train_seconds"}}.
    """
    modes = ("lora", "full")
    return markdown_table(["", "LoRA", "full"], [[label, *(cell(runs[m]) for m in modes)] for label, cell in _COST_ROWS])


def cost_note(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """The sentence under ``cost_table``: what the time per step covers and which memory was measured."""
    kind = runs["lora"]["memory"].get("kind", "n/a")
    return ("Time per step: forward, backward and optimizer step, data loading excluded, the first step left out. "
            f"Memory: {kind}" + ("; on the CPU an approximation (resident pages, not tensors)." if "cpu" in kind else "."))


def _better_than_base(base: float | None, lora: float | None) -> str | None:
    if base is None or lora is None:
        return None
    b, a = round(base, 3), round(lora, 3)
    verdict = "higher than" if a > b else ("lower than" if a < b else "equal to")
    return (f"1-click mIoU (mIoU@1): the base (LoRA's step-0 model) scores {b:.3f} and the LoRA model "
            f"{a:.3f} ({a - b:+.3f}), {verdict} its step-0 model.")


def _lora_vs_full(lora: float | None, full: float | None, costs: Mapping[str, Mapping[str, Any]] | None) -> str | None:
    if lora is None or full is None:
        return None
    lr_, fr = round(lora, 3), round(full, 3)
    relation = "equal to" if lr_ == fr else ("above" if lr_ > fr else "below")
    sentence = f"Full fine-tuning reaches mIoU@1 {fr:.3f}, so LoRA is {relation} it"
    sentence += "" if relation == "equal to" else f" by {abs(lr_ - fr):.3f}"
    if costs and "lora" in costs and "full" in costs:
        lc, fc = costs["lora"], costs["full"]
        share = 100.0 * lc["trainable_params"] / max(fc["trainable_params"], 1)
        sentence += (f", while training {lc['trainable_params']:,} parameters instead of "
                     f"{fc['trainable_params']:,} ({share:.2f} %) and storing {format_bytes(lc['weights_bytes'])} "
                     f"instead of {format_bytes(fc['weights_bytes'])} "
                     f"({fc['weights_bytes'] / max(lc['weights_bytes'], 1):.0f} times less)")
    return sentence + "."


def _step_times(costs: Mapping[str, Mapping[str, Any]] | None) -> str | None:
    if not costs or not all(_num(costs.get(m, {}).get("step_time_s")) for m in ("lora", "full")):
        return None
    tl, tf = costs["lora"]["step_time_s"], costs["full"]["step_time_s"]
    word = "faster" if tl < tf else "slower"
    sentence = (f"A LoRA training step took {tl * 1000:.0f} ms against {tf * 1000:.0f} ms for full fine-tuning "
                f"({abs(tf - tl) / tf * 100:.0f} % {word})")
    if tl >= tf:
        sentence += (": every wrapped layer runs its frozen base plus the two low-rank products, and at this "
                     "model size that extra work outweighs the weight gradients and optimizer state LoRA saves")
    elif tl > tf / 2:
        sentence += (": the backward pass still runs through the frozen layers to reach the LoRA tensors; "
                     "what shrinks is the weight gradients and the optimizer's work")
    return sentence + "."


def _original_pipeline(orig: float | None, base: float | None, lora: float | None,
                       base_resolution: tuple[int, int] | None, pipeline: str) -> str | None:
    if orig is None or base is None:
        return None
    word = "higher" if orig > base else ("lower" if orig < base else "the same")
    sentence = (f"The original pipeline ({pipeline} at 1024 px) on the same base weights scores mIoU@1 "
                f"{orig:.3f}, {word} than the base at the training resolution ({base:.3f})"
                + (f" and {'above' if orig > lora else 'below'} LoRA ({lora:.3f})" if lora is not None else ""))
    if base_resolution and orig < base:
        h, w = base_resolution
        sentence += (f"; these base weights were trained at {h}x{w} only, so at 1024 px an object spans about "
                     f"{1024 / max(h, w):.0f} times more image-encoder patches per side than in training")
    return sentence + "."


def _by_mask_size(by_area: Mapping[str, Sequence[tuple[float, float, float]]] | None) -> str | None:
    if not by_area or "lora" not in by_area or "original" not in by_area:
        return None
    groups = list(zip(by_area["lora"], by_area["original"]))
    if len(groups) < 2:
        return None
    (lo_a, lo_b, l_small), (_, _, o_small) = groups[0]
    (hi_a, hi_b, l_large), (_, _, o_large) = groups[-1]
    ls, os_, ll, ol = (round(v, 3) for v in (l_small, o_small, l_large, o_large))
    return (f"By mask size (prompts in {len(groups)} equal groups by target area at the training "
            f"resolution), mIoU@1 of LoRA and of the 1024 px pipeline: smallest masks ({lo_a:.0f}-{lo_b:.0f} "
            f"px) {ls:.3f} and {os_:.3f} (pipeline {os_ - ls:+.3f}); largest ({hi_a:.0f}-{hi_b:.0f} px) "
            f"{ll:.3f} and {ol:.3f} (pipeline {ol - ll:+.3f}).")


_Get = Callable[[str, str], "float | None"]
"""``get(role, metric)``: the metric of a role as a float, or None where it was not measured."""


def _clicks(get: _Get) -> str | None:
    noc_b, noc_l = get("base", "noc@90"), get("lora", "noc@90")
    if noc_b is None or noc_l is None:
        return None
    fewer = "fewer" if noc_l < noc_b else ("more" if noc_l > noc_b else "as many")
    sentence = (f"Clicks to reach IoU 0.90 (NoC@90, a failure counts as the whole budget): base {noc_b:.2f}, "
                f"LoRA {noc_l:.2f} ({fewer} clicks{'' if fewer == 'as many' else f', {abs(noc_b - noc_l):.2f}'})")
    m5_b, m5_l = get("base", "miou@5"), get("lora", "miou@5")
    if m5_b is not None and m5_l is not None:
        sentence += f"; after 5 clicks mIoU is {m5_b:.3f} for the base and {m5_l:.3f} for LoRA"
    return sentence + "."


def _box_and_iou_head(get: _Get) -> list[str]:
    out = []
    box_b, box_l, box_f = get("base", "box_miou"), get("lora", "box_miou"), get("full", "box_miou")
    if box_b is not None and box_l is not None:
        out.append(f"With the exact box as prompt, mIoU goes from {box_b:.3f} (base) to {box_l:.3f} (LoRA)"
                   + (f"; full fine-tuning {box_f:.3f}." if box_f is not None else "."))
    mae_b, mae_l = get("base", "iou_head_mae"), get("lora", "iou_head_mae")
    if mae_b is not None and mae_l is not None:
        out.append(f"The IoU head's error (mean |predicted - true IoU| of the 3 first-click outputs) is "
                   f"{mae_b:.3f} for the base and {mae_l:.3f} for LoRA.")
    return out


def _deployed(deployed: float | None, lora: float | None, orig: float | None, pipeline: str) -> str | None:
    """LoRA merged and run at 1024 px against LoRA at its training resolution and the base at 1024 px."""
    if deployed is None or lora is None:
        return None
    gap = deployed - lora
    how = (f"within 0.02 of it ({gap:+.3f})" if abs(gap) < 0.02
           else f"{'above' if gap > 0 else 'below'} it by {abs(gap):.3f}")
    text = (f"Deployed as users run it (merged into the base checkpoint, `{pipeline}` at 1024 px) the LoRA model "
            f"scores mIoU@1 {deployed:.3f} against {lora:.3f} at its training resolution, {how}. The LoRA weights were trained on the encoder's low-resolution token grid; at 1024 px the "
            "position table is the checkpoint's own and each attention window sees a smaller part of the image")
    if orig is not None:
        text += f"; against the base in the same pipeline ({orig:.3f}) fine-tuning {'helps' if deployed > orig else 'does not help'}"
    return text + "."


def discussion(
    metrics: Mapping[str, Mapping[str, Any]],
    *,
    costs: Mapping[str, Mapping[str, Any]] | None = None,
    by_area: Mapping[str, Sequence[tuple[float, float, float]]] | None = None,
    base_resolution: tuple[int, int] | None = None,
    pipeline: str,
) -> list[str]:
    """Sentences about the measured numbers; every number in them is taken from the arguments.

    Args:
        metrics: {"base" | "lora" | "full" | "original" | "deployed": {metric: value}} (``metrics.METRIC_KEYS``;
            "deployed": the LoRA model merged, SamPredictor at 1024 px);
            roles that were not evaluated are left out, values may be None.
        costs: {"lora" | "full": {"trainable_params", "weights_bytes", "step_time_s"}} from compare.json.
        by_area: {"lora" | "original": ``mean_by_area`` of the 1-click IoUs} over the same prompts.
        base_resolution: (H, W) the base weights were trained at, when known (the demo's tiny base).
        pipeline: the model family's original pipeline (``families.Family.pipeline``).

    Returns:
        One sentence per comparison that the inputs allow.
    """

    def get(role: str, key: str) -> float | None:
        return _num(metrics.get(role, {}).get(key))

    base, lora, full, orig = (get(r, "miou@1") for r in ("base", "lora", "full", "original"))
    sentences = [
        _better_than_base(base, lora),
        _lora_vs_full(lora, full, costs),
        _step_times(costs),
        _original_pipeline(orig, base, lora, base_resolution, pipeline),
        _deployed(get("deployed", "miou@1"), lora, orig, pipeline),
        _by_mask_size(by_area),
        _clicks(get),
        *_box_and_iou_head(get),
    ]
    return [s for s in sentences if s is not None]
