"""Object-proposal recall: how many ground-truth masks a ranked set of mask proposals finds.

This is the "zero-shot object proposals" measure of the SAM paper (Section 7.3, AR@1000 on LVIS): for
each image the proposals are ranked by score and only the top N count. A ground-truth mask is
*recalled at IoU t* when any of the top-N proposals overlaps it with mask IoU >= t; recall at t is the
fraction of ground-truth masks recalled, and average recall (AR@N) is its mean over t = 0.50, 0.55,
..., 0.95. Over a data set the ground-truth masks of all images are pooled (``ProposalRecall``), so an
image with many objects weighs more than one with few.

IoUs are computed for all proposal / ground-truth pairs at once as a matrix product of the flattened
masks, over blocks of pixels so that memory stays bounded for 1000 proposals on a 1500x2250 image.
Conventions: a ground-truth mask with no pixel has IoU 0 with everything, so it is never recalled;
the thresholds are the decimals above exactly, so an IoU of exactly 7/10 counts as reaching 0.70.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["IOU_THRESHOLDS", "LIMITS", "ProposalRecall", "average_recall", "mask_ious", "recall_hits"]

IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
"""0.50, 0.55, ..., 0.95 as the doubles nearest those decimals (no drift from repeated addition)."""
LIMITS: tuple[int, ...] = (100, 1000)
"""Proposals per image that count: AR@100 and AR@1000 (the SAM paper's number)."""
BLOCK_BYTES = 64 * 2**20
"""Memory of one block of flattened float32 masks in ``mask_ious``."""


def _as_masks(masks: Any, like: np.ndarray | None = None) -> np.ndarray:
    """Boolean (M, H*W) from (M, H, W) arrays, torch tensors or lists of (H, W) masks; [] is no mask."""
    if hasattr(masks, "detach"):  # a torch tensor, possibly on a GPU
        masks = masks.detach().cpu().numpy()
    if isinstance(masks, (list, tuple)) and not masks:
        pixels = like.shape[1] if like is not None else 0
        return np.zeros((0, pixels), dtype=bool)
    array = np.asarray(masks)
    if array.ndim != 3:
        raise ValueError(f"masks must be (M, H, W), got shape {array.shape}")
    return array.reshape(array.shape[0], array.shape[1] * array.shape[2]).astype(bool, copy=False)


def _check_pixels(proposals: np.ndarray, gt: np.ndarray) -> None:
    if len(proposals) and len(gt) and proposals.shape[1] != gt.shape[1]:
        raise ValueError(
            f"proposals have {proposals.shape[1]} pixels per mask but the ground truth {gt.shape[1]}: "
            f"give both at the image's size"
        )


def mask_ious(proposals: Any, gt_masks: Any, block_bytes: int = BLOCK_BYTES) -> np.ndarray:
    """Mask IoU of every proposal with every ground-truth mask: float64 (P, G).

    The intersections are a product of the flattened masks as float32 over blocks of at most
    ``block_bytes``; each block sums at most 2**24 ones, which float32 holds exactly.
    """
    gt = _as_masks(gt_masks)
    pred = _as_masks(proposals, like=gt)
    gt = gt if len(gt) else np.zeros((0, pred.shape[1]), dtype=bool)
    _check_pixels(pred, gt)
    pixels = pred.shape[1]
    step = int(min(2**24, max(1, block_bytes // (4 * max(1, len(pred) + len(gt))))))
    inter = np.zeros((len(pred), len(gt)), dtype=np.float64)
    for start in range(0, pixels, step):
        block = slice(start, start + step)
        inter += pred[:, block].astype(np.float32) @ gt[:, block].astype(np.float32).T
    union = pred.sum(1, dtype=np.float64)[:, None] + gt.sum(1, dtype=np.float64)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _ranked(proposals: Any, scores: Sequence[float] | np.ndarray | None, keep: int) -> Any:
    """The first ``keep`` proposals by descending score (stable: the earlier of equal scores first)."""
    if scores is None:
        return proposals[:keep]
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) != len(proposals):
        raise ValueError(f"{len(scores)} scores for {len(proposals)} proposals")
    order = np.argsort(-scores, kind="stable")[:keep]
    if isinstance(proposals, (list, tuple)):
        return [proposals[i] for i in order]
    return proposals[order]


def recall_hits(
    proposals: Any,
    gt_masks: Any,
    limits: Sequence[int] = LIMITS,
    iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
    scores: Sequence[float] | np.ndarray | None = None,
) -> np.ndarray:
    """Which ground-truth masks of one image the top-N proposals recall: bool (len(limits), len(thresholds), G).

    Args:
        proposals: (P, H, W) boolean masks, best first (or in any order, with ``scores``).
        gt_masks: (G, H, W) boolean masks of the same image.
        scores: (P,) scores to rank the proposals by, highest first; None: already ranked.
    """
    if any(int(n) < 1 for n in limits):
        raise ValueError(f"limits must be positive proposal counts, got {list(limits)}")
    top = _ranked(proposals, scores, max(limits))
    ious = mask_ious(top, gt_masks)  # (P', G), P' <= max(limits)
    if ious.shape[0] == 0:
        return np.zeros((len(limits), len(iou_thresholds), ious.shape[1]), dtype=bool)
    best = np.maximum.accumulate(ious, axis=0)  # best[k]: the best IoU among the top k + 1
    best_at = best[[min(int(n), len(best)) - 1 for n in limits]]  # (L, G)
    return best_at[:, None, :] >= np.asarray(iou_thresholds, dtype=np.float64)[None, :, None]


def average_recall(
    proposals: Any,
    gt_masks: Any,
    limits: Sequence[int] = LIMITS,
    iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
    scores: Sequence[float] | np.ndarray | None = None,
) -> dict[int, float]:
    """AR@N of one image for each N of ``limits``: ``{100: ..., 1000: ...}``; NaN when it has no ground truth."""
    hits = recall_hits(proposals, gt_masks, limits, iou_thresholds, scores)
    if hits.shape[-1] == 0:
        return {int(n): float("nan") for n in limits}
    return {int(n): float(hits[i].mean()) for i, n in enumerate(limits)}


@dataclass
class ProposalRecall:
    """AR@N over many images, all ground-truth masks pooled: ``update`` per image, then ``compute``."""

    limits: tuple[int, ...] = LIMITS
    iou_thresholds: tuple[float, ...] = IOU_THRESHOLDS
    hits: np.ndarray = field(init=False, repr=False)
    gt_count: int = field(init=False, default=0)
    images: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.limits = tuple(int(n) for n in self.limits)
        self.iou_thresholds = tuple(float(t) for t in self.iou_thresholds)
        self.hits = np.zeros((len(self.limits), len(self.iou_thresholds)), dtype=np.int64)

    def update(
        self, proposals: Any, gt_masks: Any, scores: Sequence[float] | np.ndarray | None = None
    ) -> None:
        """Add one image: its proposals (best first, or ranked by ``scores``) and its ground-truth masks."""
        found = recall_hits(proposals, gt_masks, self.limits, self.iou_thresholds, scores)
        self.hits += found.sum(axis=-1)
        self.gt_count += found.shape[-1]
        self.images += 1

    def recall(self) -> np.ndarray:
        """Recall per limit and threshold, float64 (len(limits), len(thresholds)); NaN before any GT mask."""
        if self.gt_count == 0:
            return np.full(self.hits.shape, np.nan)
        return self.hits / self.gt_count

    def compute(self) -> dict[str, float]:
        """``{"AR@100": ..., "AR@1000": ...}`` over all ground-truth masks seen."""
        recall = self.recall()
        return {f"AR@{n}": float(recall[i].mean()) for i, n in enumerate(self.limits)}
