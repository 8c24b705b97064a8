"""The evaluation protocol: every model on the same images, target masks and simulated prompts.

Per image and target mask (every kept mask of the image by default; at most
``masks_per_image`` of them drawn from (seed, image_id); or the sample's own ``targets``):

- **clicks**: SAM's interactive evaluation with the standard click of RITM and SAM 2
  (``prompts.click_points``): each click lands on the most interior pixel of the error region
  whose distance transform has the larger maximum (positive in a false negative, negative in a
  false positive), never twice on one pixel; click 1, on an empty prediction, is the GT's most
  interior point. As in training, click 1 is answered with the 3 multimask outputs and the one
  with the highest predicted IoU is kept; each later click gets all clicks so far plus the kept
  mask's low-resolution logits as mask prompt and is answered by SAM's single-mask output
  (``refine="single"``, the default, as the recipe trains it and ``SamPredictor`` is used), or by
  the 3 outputs, the highest predicted IoU kept (``refine="multi"``). IoU with the GT after every
  click, up to ``max_clicks``.
- **box**: the exact GT box (``masks_to_boxes``), answered by the 3 outputs, the highest
  predicted IoU kept (``box_output="multi"``, the default), or by the single-mask output
  (``box_output="single"``): ``box_iou``; and always by the single-mask output, what
  ``SamPredictor(box=..., multimask_output=False)`` returns: ``box_iou_single``.
- **oracle** and **IoU head**: the IoUs of the 3 first-click outputs, their best, and
  |predicted - true IoU| over the 3; the 3 are listed big to small by area, with ``output_tokens``
  naming the mask token that made each.

The protocol is deterministic: clicks are chosen by a distance transform, not drawn; the seed
only picks the target masks when ``masks_per_image`` caps them. Metrics: ``metrics.summarize``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from lora_sam.data.samples import choose_targets
from lora_sam.errors import UserError
from lora_sam.evaluation.options import EVAL_DEFAULTS, Refine
from lora_sam.evaluation.segmenters import LowResSegmenter, Prediction, PredictorSegmenter, Segmenter
from lora_sam.settings import MAX_CLICKS
from lora_sam.training.metrics import NOC_THRESHOLDS, mask_iou, number_of_clicks, summarize
from lora_sam.training.prompts import click_points, masks_to_boxes

__all__ = [
    "LowResSegmenter",
    "PredictorSegmenter",
    "Segmenter",
    "evaluate",
    "evaluate_image",
    "evaluate_many",
    "json_safe",
    "sample_targets",
]

PROMPT_COLUMNS = ("click_ious", "click_points", "click_labels", "box", "box_iou", "box_iou_single", "output_ious",
                  "iou_pred", "output_tokens")


def _chosen(out: Prediction, best: Tensor) -> tuple[Tensor, Tensor | None]:
    """The kept mask (K, H, W) and its low-resolution logits (K, 1, h, w) as the next mask prompt."""
    rows = torch.arange(len(best))
    low = None
    if out.low_res is not None:
        device = out.low_res.device
        low = out.low_res[rows.to(device), best.to(device)][:, None]
    return out.masks[rows, best], low


def _refined(segmenter: Segmenter, refine: Refine, **prompts: Any) -> tuple[Tensor, Tensor | None]:
    if refine == "multi":
        out = segmenter.predict(**prompts, multimask=True)
        return _chosen(out, out.iou_pred.argmax(1))
    out = segmenter.predict(**prompts, multimask=False)
    return _chosen(out, torch.zeros(out.masks.shape[0], dtype=torch.long))


@torch.no_grad()
def evaluate_image(
    segmenter: Segmenter,
    sample: dict[str, Any],
    targets: Tensor,
    *,
    max_clicks: int = MAX_CLICKS,
    refine: Refine = EVAL_DEFAULTS.refine,
    box_output: Refine = EVAL_DEFAULTS.box_output,
    prompt_batch: int = 32,
    keep_masks: bool = False,
) -> dict[str, Tensor]:
    """Run the protocol of the module docstring for K target masks of one sample.

    Args:
        segmenter: the model (see ``lora_sam.evaluation.segmenters.Segmenter``); ``set_image`` is called here.
        sample: the dict of ``docs/contracts.md``.
        targets: (K,) int64 indices into ``sample["masks"]`` of non-empty masks.
        max_clicks: C, clicks per target.
        refine: ``"single"`` (default) or ``"multi"``: the output used after the first click.
        box_output: ``"multi"`` (default) or ``"single"``: the output used for the box.
        prompt_batch: at most this many prompts per ``predict`` call.
        keep_masks: also return the kept masks.

    Returns:
        ``click_ious`` (K, C) float32; ``click_points`` (K, C, 2) float32 (x, y) and
        ``click_labels`` (K, C) int64 (1 / 0, -1 when the mask was already exact); ``box`` (K, 4)
        XYXY; ``box_iou`` and ``box_iou_single`` (K,); ``output_ious`` and ``iou_pred`` (K, 3) of the first click, big to
        small by output area, and ``output_tokens`` (K, 3) the mask token of each. With
        ``keep_masks``: ``click_masks`` bool (K, C, H, W) and ``box_masks`` (K, H, W).
    """
    if max_clicks < 1:
        raise ValueError(f"max_clicks must be >= 1, got {max_clicks}")
    for name, value in (("refine", refine), ("box_output", box_output)):
        if value not in ("single", "multi"):
            raise ValueError(f"{name} must be 'single' or 'multi', got {value!r}")
    segmenter.set_image(sample)
    gt_all = sample["masks"][targets.cpu()].bool().cpu()  # (K, H, W)
    parts: dict[str, list[Tensor]] = {}
    for start in range(0, len(gt_all), prompt_batch):
        gt = gt_all[start : start + prompt_batch]
        result = _clicks(segmenter, gt, max_clicks, refine, keep_masks)
        box = masks_to_boxes(gt).float()
        box_pred, _ = _refined(segmenter, box_output, boxes=box)
        single = box_pred if box_output == "single" else _refined(segmenter, "single", boxes=box)[0]
        result.update(box=box, box_iou=mask_iou(box_pred, gt), box_iou_single=mask_iou(single, gt))
        if keep_masks:
            result["box_masks"] = box_pred
        for key, value in result.items():
            parts.setdefault(key, []).append(value.cpu())
    return {key: torch.cat(values) for key, values in parts.items()}


def _clicks(segmenter: Segmenter, gt: Tensor, max_clicks: int, refine: Refine, keep_masks: bool) -> dict[str, Tensor]:
    """The click rounds of ``evaluate_image`` for the K targets ``gt`` (K, H, W) of one prompt batch."""
    k = len(gt)
    pred = torch.zeros_like(gt)
    points = torch.zeros((k, 0, 2))
    labels = torch.zeros((k, 0), dtype=torch.long)
    low: Tensor | None = None
    not_clicked = torch.ones_like(gt)
    ious, masks = [], []
    for click in range(max_clicks):
        point, label = click_points(pred, gt, not_clicked=not_clicked)
        clicked = label >= 0
        not_clicked[clicked, point[clicked, 1].long(), point[clicked, 0].long()] = False
        points = torch.cat([points, point[:, None]], dim=1)
        labels = torch.cat([labels, label[:, None]], dim=1)
        if click == 0:
            out = segmenter.predict(points=points, labels=labels, multimask=True)
            tokens = torch.argsort(out.masks.flatten(2).sum(2), dim=1, descending=True, stable=True)  # big first
            output_ious = mask_iou(out.masks, gt[:, None]).gather(1, tokens)  # (k, 3)
            iou_pred = out.iou_pred.cpu().gather(1, tokens)
            pred, low = _chosen(out, out.iou_pred.argmax(1))
        else:
            pred, low = _refined(segmenter, refine, points=points, labels=labels, mask_input=low)
        ious.append(mask_iou(pred, gt))
        if keep_masks:
            masks.append(pred)
    result = {"click_ious": torch.stack(ious, 1), "click_points": points, "click_labels": labels,
              "output_ious": output_ious, "iou_pred": iou_pred, "output_tokens": tokens}
    if keep_masks:
        result["click_masks"] = torch.stack(masks, 1)
    return result


def sample_targets(sample: dict[str, Any], *, masks_per_image: int | None = None, seed: int = 0,
                   use_sample_targets: bool = False) -> Tensor:
    """The target masks of a sample: (K,) int64 indices of non-empty masks.

    Every mask by default; at most ``masks_per_image`` drawn from (seed, image_id) when given;
    ``sample["targets"]`` with ``use_sample_targets``. Sorted.
    """
    masks = sample["masks"]
    if use_sample_targets:
        chosen = sample["targets"].long().cpu()
    elif masks_per_image is not None and len(masks) > masks_per_image:
        chosen = choose_targets(len(masks), masks_per_image, seed=seed, epoch=0, image_id=str(sample["image_id"]))
    else:
        chosen = torch.arange(len(masks))
    chosen = chosen.sort().values
    return chosen[masks[chosen].flatten(1).any(1).cpu()]


def json_safe(value: Any, digits: int = 6) -> Any:
    """Tensors, arrays and numbers as JSON values; NaN and infinities become None."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, Mapping):
        return {str(k): json_safe(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v, digits) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return round(value, digits) if math.isfinite(value) else None
    return value


def _finish(columns: dict[str, list[Any]], max_clicks: int, *, images: int, skipped: list[str],
            seconds: float) -> dict[str, Any]:
    """One model's entry of ``evaluate_many`` from its accumulated per-prompt columns."""
    if not columns.get("click_ious"):
        reasons = "; ".join(skipped[:3]) + (f"; ... ({len(skipped)} in all)" if len(skipped) > 3 else "")
        raise UserError("no prompts were evaluated: every sample was skipped or had no usable mask"
                        + (f" ({reasons})" if reasons else "") + ": check the data with lora-sam check-data")
    arrays = {k: torch.cat(v) for k, v in columns.items() if k in PROMPT_COLUMNS or k in ("mask_index", "area")}
    metrics = summarize(click_ious=arrays["click_ious"], box_ious=arrays["box_iou"],
                        box_ious_single=arrays["box_iou_single"],
                        output_ious=arrays["output_ious"], iou_pred=arrays["iou_pred"],
                        iou_true=arrays["output_ious"], max_clicks=max_clicks)
    prompts: dict[str, Any] = {"image_id": columns["image_id"], **arrays}
    for threshold in NOC_THRESHOLDS:
        prompts[f"noc@{round(threshold * 100)}"] = number_of_clicks(arrays["click_ious"], threshold,
                                                                    max_clicks=max_clicks)
    return {"metrics": json_safe(metrics), "prompts": json_safe(prompts), "images": images,
            "prompt_count": len(columns["image_id"]), "skipped": skipped, "seconds": round(seconds, 3)}


def _append(columns: dict[str, list[Any]], sample: dict[str, Any], targets: Tensor, result: dict[str, Tensor]) -> None:
    """Add one image's per-prompt results (and the prompts' image id, mask index and area) to ``columns``."""
    columns.setdefault("image_id", []).extend([str(sample["image_id"])] * len(targets))
    columns.setdefault("mask_index", []).append(targets.cpu())
    columns.setdefault("area", []).append(sample["masks"][targets].flatten(1).sum(1).cpu())
    for key, value in result.items():
        columns.setdefault(key, []).append(value)


def evaluate_many(
    segmenters: Mapping[str, Segmenter],
    samples: Iterable[Any],
    *,
    max_clicks: int = MAX_CLICKS,
    seed: int = 0,
    masks_per_image: int | None = None,
    use_sample_targets: bool = False,
    refine: Refine = EVAL_DEFAULTS.refine,
    box_output: Refine = EVAL_DEFAULTS.box_output,
    prompt_batch: int = 32,
    progress: bool = True,
    total: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate several models image by image on the same targets and prompts (see the module docstring).

    Args:
        segmenters: {name: segmenter}.
        samples: sample dicts (``docs/contracts.md``); ``BadSample`` entries are skipped and listed.
        max_clicks, refine, box_output, prompt_batch: see ``evaluate_image``.
        seed, masks_per_image, use_sample_targets: which masks are targets (``sample_targets``).
        progress: show a tqdm bar over images; ``total`` its length.

    Returns:
        {name: {"metrics": {metric: float | None} (``metrics.METRIC_KEYS``),
        "prompts": {"image_id": [P], "mask_index": [P], "area": [P] (pixels at training resolution),
        "click_ious": [P, C], "click_points": [P, C, 2], "click_labels": [P, C], "box": [P, 4],
        "box_iou": [P], "box_iou_single": [P], "output_ious": [P, 3], "iou_pred": [P, 3], "output_tokens": [P, 3],
        "noc@85": [P], "noc@90": [P]},
        "images": int, "prompt_count": P, "skipped": [str], "seconds": float (the model's own time)}}.
        JSON-serialisable; NaN is None.
    """
    if not segmenters:
        raise ValueError("evaluate_many needs at least one segmenter")
    columns: dict[str, dict[str, list[Any]]] = {name: {} for name in segmenters}
    seconds = dict.fromkeys(segmenters, 0.0)
    skipped: list[str] = []
    images = n_prompts = 0
    bar = tqdm(samples, total=total, desc="eval", unit="image", disable=not progress)
    for sample in bar:
        if not isinstance(sample, dict):
            skipped.append(str(sample))
            continue
        targets = sample_targets(sample, masks_per_image=masks_per_image, seed=seed,
                                 use_sample_targets=use_sample_targets)
        if len(targets) == 0:
            skipped.append(f"{sample['image_id']}: no non-empty target mask")
            continue
        images += 1
        n_prompts += len(targets)
        for name, segmenter in segmenters.items():
            start = time.perf_counter()
            result = evaluate_image(segmenter, sample, targets, max_clicks=max_clicks, refine=refine,
                                    box_output=box_output, prompt_batch=prompt_batch)
            seconds[name] += time.perf_counter() - start
            _append(columns[name], sample, targets, result)
        bar.set_postfix(prompts=n_prompts)
    return {name: _finish(columns[name], max_clicks, images=images, skipped=skipped, seconds=seconds[name])
            for name in segmenters}


def evaluate(
    segmenter: Segmenter,
    samples: Iterable[Any],
    *,
    max_clicks: int = MAX_CLICKS,
    seed: int = 0,
    progress: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Evaluate one model; the entry of ``evaluate_many`` for it ({"metrics", "prompts", ...})."""
    return evaluate_many({"model": segmenter}, samples, max_clicks=max_clicks, seed=seed, progress=progress,
                         **options)["model"]
