"""Automatic masks ("segment everything") scored as SAM's paper scores them: object-proposal recall.

For each model at 1024 px (the base as the original pipeline, every adapter merged, every full model: the
``@1024`` rows of ``build_segmenters``), its family's mask generator (SAM v1: the official
``SamAutomaticMaskGenerator``) runs on each image as the predictor sees it; its masks, ranked by predicted
IoU, are resized to the training resolution on the ground truth's own grid and matched against every GT
mask of the image: AR@N is the recall of the GT masks by the top N proposals, averaged over IoU thresholds
0.5:0.95 (``proposals.ProposalRecall``).

The generator's quality filters are off (predicted IoU and stability thresholds 0): they were tuned for
ViT-H and would leave a small model nothing to rank, while AR@N already keeps only the N best-ranked
masks. Its box NMS (0.7) stays.

``filter_candidates`` applies the generator's filters (predicted IoU, stability, box NMS) to the records of a
generator that kept every candidate (``ALL_CANDIDATES``), as the generator itself applies them, counting what
each removes: ``lora-sam segment-all`` says so when an image keeps no mask, and
``benchmarks/automatic_thresholds.py`` measures a base's thresholds with it from one pass per image.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torchvision.ops import batched_nms
from tqdm import tqdm

from lora_sam.data.annotations import BadSample
from lora_sam.evaluation.proposals import ProposalRecall
from lora_sam.evaluation.segmenters import (
    PredictorSegmenter,
    Segmenter,
    on_training_grid,
    original_image,
    upscaled_image,
)

__all__ = ["ALL_CANDIDATES", "EXAMPLE_MASKS", "FILTERS", "automatic_masks", "automatic_recall", "filter_candidates"]

ALL_CANDIDATES: dict[str, Any] = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0,
                                  "min_mask_region_area": 0}
"""Generator options that keep every candidate mask: both quality filters off (a threshold of 0 turns Meta's
off) and an NMS that removes nothing (it drops a box whose IoU with a better one is above 1, which none is)."""
FILTERS = ("pred_iou", "stability", "nms")
"""The generator's filters in the order it applies them (``filter_candidates``' counts)."""


def filter_candidates(records: Sequence[dict[str, Any]], pred_iou_thresh: float, stability_score_thresh: float,
                      box_nms_thresh: float) -> tuple[list[int], dict[str, int]]:
    """The records (of a generator with ``ALL_CANDIDATES``) that a generator with these thresholds keeps, and how
    many candidates each filter removed: ``(kept indices, best first; {"pred_iou", "stability", "nms"})``.

    The filters as Meta's generators (SAM v1's and SAM 2.1's alike) apply them to one crop: predicted IoU
    ``> pred_iou_thresh`` and stability ``>= stability_score_thresh`` (each off at 0), compared in float32 as
    the generator's tensors are, then box NMS at ``box_nms_thresh`` ranked by predicted IoU (torchvision's
    ``batched_nms``, the generator's call). Small-region post-processing (``min_mask_region_area``) and
    multi-crop NMS are not modelled.
    """
    iou = np.array([r["predicted_iou"] for r in records], dtype=np.float32)
    stability = np.array([r["stability_score"] for r in records], dtype=np.float32)
    keep = np.ones(len(records), dtype=bool)
    removed = {}
    for name, passed, threshold in (("pred_iou", iou > np.float32(pred_iou_thresh), pred_iou_thresh),
                                    ("stability", stability >= np.float32(stability_score_thresh),
                                     stability_score_thresh)):
        drop = keep & ~passed if threshold > 0 else np.zeros_like(keep)
        removed[name] = int(drop.sum())
        keep &= ~drop
    left = np.flatnonzero(keep)
    if not len(left):
        return [], {**removed, "nms": 0}
    xywh = torch.tensor([records[i]["bbox"] for i in left], dtype=torch.float32)
    boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
    kept = batched_nms(boxes, torch.from_numpy(iou[left]), torch.zeros(len(left)), box_nms_thresh)
    return [int(left[i]) for i in kept], {**removed, "nms": len(left) - len(kept)}


def automatic_masks(generator: Any, sample: dict[str, Any], source: str) -> tuple[torch.Tensor, np.ndarray]:
    """The generator's masks of one sample at the training resolution, (P, H, W) bool (padding False), best
    predicted IoU first, and those predicted IoUs (P,)."""
    frame = tuple(int(v) for v in sample["image"].shape[-2:])
    input_size = tuple(int(v) for v in sample["input_size"])
    image = upscaled_image(sample) if source == "upscaled" else original_image(sample)
    records = sorted(generator.generate(image), key=lambda r: -float(r["predicted_iou"]))
    full = np.stack([r["segmentation"] for r in records]) if records else np.zeros((0, *image.shape[:2]), bool)
    masks = on_training_grid(torch.from_numpy(full), frame, input_size)
    return masks, np.array([float(r["predicted_iou"]) for r in records])


EXAMPLE_MASKS = 30  # the masks of each model kept for the report's figure, best predicted IoU first


def automatic_recall(segmenters: Mapping[str, Segmenter], samples: Iterable[Any], *, points_per_side: int,
                     progress: bool = True, total: int | None = None,
                     example: dict[str, Any] | None = None) -> dict[str, dict[str, float]]:
    """AR@100 and AR@1000 of each 1024 px model's automatic masks against every GT mask of ``samples``:
    ``{name: {"ar@100", "ar@1000", "proposals_per_image", "images"}}``; models below 1024 px are left out.
    ``example``: a dict filled with the first image's masks per model (for the report's figure):
    ``{"image_id", "image": uint8 (3, h, w), "masks": {name: bool (P, h, w)}, "scores": {name: (P,)}}``."""
    generators = {name: seg.model.mask_generator(points_per_side=points_per_side, pred_iou_thresh=0.0,
                                                 stability_score_thresh=0.0)
                  for name, seg in segmenters.items() if isinstance(seg, PredictorSegmenter)}
    sources = {name: segmenters[name].source for name in generators}  # type: ignore[attr-defined]
    recall = {name: ProposalRecall() for name in generators}
    counts = {name: 0 for name in generators}
    for sample in tqdm(samples, desc="automatic masks", unit="image", total=total, disable=not progress):
        if isinstance(sample, BadSample) or not len(sample["masks"]):
            continue
        gt = sample["masks"].bool()
        h, w = (int(v) for v in sample["input_size"])
        first = example is not None and not example
        for name, generator in generators.items():
            with torch.no_grad():
                masks, scores = automatic_masks(generator, sample, sources[name])
            recall[name].update(masks.numpy(), gt.numpy())
            counts[name] += len(masks)
            if first:
                example.setdefault("masks", {})[name] = masks[:EXAMPLE_MASKS, :h, :w].clone()
                example.setdefault("scores", {})[name] = torch.from_numpy(scores[:EXAMPLE_MASKS].copy())
        if first:
            example.update(image_id=str(sample["image_id"]), image=sample["image"][:, :h, :w].round().clamp(0, 255)
                           .to(torch.uint8))
    out = {}
    for name, r in recall.items():
        values = r.compute()
        out[name] = {"ar@100": values["AR@100"], "ar@1000": values["AR@1000"],
                     "proposals_per_image": counts[name] / max(r.images, 1), "images": r.images}
    return out
