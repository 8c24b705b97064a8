"""SAM's training loss: focal + dice on the masks, MSE on the IoU head (SAM paper, Appendix A).

All functions are pure. Mask tensors end in (H, W); any leading dimensions (``...``) are kept,
so one call scores every mask of a batch: logits (K, M, H, W) give losses (K, M).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, *, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Focal loss of mask logits, averaged over the pixels of each mask.

    Per pixel, with p = sigmoid(logit), t in {0, 1} and p_t = p if t else 1 - p:
    ``-alpha_t * (1 - p_t) ** gamma * log(p_t)``, alpha_t = alpha if t else 1 - alpha.
    A negative ``alpha`` turns the alpha weighting off (as in torchvision).

    Args:
        logits: (..., H, W) unthresholded mask logits.
        targets: (..., H, W) ground truth, bool or float in 0..1.

    Returns:
        (...) the mean over (H, W) of each mask's per-pixel loss.
    """
    logits = logits.float()
    targets = targets.to(logits.dtype)
    prob = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1.0 - prob) * (1.0 - targets)
    loss = ce * (1.0 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1.0 - alpha) * (1.0 - targets))
    return loss.mean(dim=(-2, -1))


def dice_loss(logits: Tensor, targets: Tensor, *, eps: float = 1.0) -> Tensor:
    """Soft dice loss on sigmoid probabilities, per mask.

    ``1 - (2 * sum(p * t) + eps) / (sum(p) + sum(t) + eps)`` with sums over (H, W).

    Args:
        logits: (..., H, W) unthresholded mask logits.
        targets: (..., H, W) ground truth, bool or float in 0..1.
        eps: smoothing added to numerator and denominator (an empty target and an empty
            prediction give a loss near 0).

    Returns:
        (...) one loss per mask, in 0..1.
    """
    prob = torch.sigmoid(logits.float())
    targets = targets.to(prob.dtype)
    intersection = (prob * targets).sum(dim=(-2, -1))
    total = prob.sum(dim=(-2, -1)) + targets.sum(dim=(-2, -1))
    return 1.0 - (2.0 * intersection + eps) / (total + eps)


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


def sam_loss(
    logits: Tensor,
    iou_pred: Tensor,
    gt: Tensor,
    *,
    focal_weight: float = 20.0,
    dice_weight: float = 1.0,
    iou_weight: float = 1.0,
    min_only: bool = False,
) -> dict[str, Tensor]:
    """SAM's loss for K prompts with M outputs each.

    Default: output m of prompt k is compared with its own target ``gt[k, m]`` (the project
    pairs the 3 outputs with the 3 masks of ``point_sample`` / ``box_sample``, big to small);
    the focal and dice terms are means over the K x M masks.

    ``min_only=True`` (the SAM paper's variant): ``gt`` holds one target per prompt, every
    output is compared with it, and per prompt only the output with the lowest mask loss
    ``focal_weight * focal + dice_weight * dice`` is reported and backpropagated; the focal and
    dice terms are means over K of that output's losses.

    In both modes the IoU term is the MSE, over all K x M outputs, between ``iou_pred`` and the
    true IoU of ``logits > 0`` with that output's target (no gradient through the true IoU).

    Args:
        logits: (K, M, H, W) mask logits at the resolution of ``gt``.
        iou_pred: (K, M) the IoU head's predictions.
        gt: (K, M, H, W) bool targets, or (K, 1, H, W) with ``min_only``.
        focal_weight, dice_weight, iou_weight: weights of the terms in "total".
        min_only: backpropagate only the best output per prompt.

    Returns:
        Scalars "focal", "dice", "iou" and "total" = focal_weight * focal + dice_weight * dice
        + iou_weight * iou.
    """
    if logits.dim() != 4 or iou_pred.shape != logits.shape[:2]:
        raise ValueError(
            f"expected logits (K, M, H, W) and iou_pred (K, M), got {tuple(logits.shape)} and {tuple(iou_pred.shape)}"
        )
    k, m, h, w = logits.shape
    expected = (k, 1, h, w) if min_only else (k, m, h, w)
    if tuple(gt.shape) != expected:
        raise ValueError(f"expected gt {expected} (min_only={min_only}), got {tuple(gt.shape)}")
    if k == 0:
        raise ValueError("sam_loss needs at least one prompt (K = 0)")
    gt = gt.bool().expand(k, m, h, w)
    focal = sigmoid_focal_loss(logits, gt)  # (K, M)
    dice = dice_loss(logits, gt)  # (K, M)
    true_iou = mask_iou(logits.detach() > 0, gt)  # (K, M)
    iou = F.mse_loss(iou_pred.float(), true_iou)
    if min_only:
        best = (focal_weight * focal + dice_weight * dice).detach().argmin(dim=1, keepdim=True)  # (K, 1)
        focal, dice = focal.gather(1, best), dice.gather(1, best)
    focal, dice = focal.mean(), dice.mean()
    total = focal_weight * focal + dice_weight * dice + iou_weight * iou
    return {"focal": focal, "dice": dice, "iou": iou, "total": total}
