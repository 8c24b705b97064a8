"""SAM's training loss: focal + dice on the masks, MSE on the IoU head (SAM paper, Appendix A).

All functions are pure. Mask tensors end in (H, W); any leading dimensions (``...``) are kept,
so one call scores every mask of a batch: logits (K, M, H, W) give losses (K, M).
"""

from __future__ import annotations

import itertools
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lora_sam.models.checkpoints import SAM_RECIPE_DEFAULTS
from lora_sam.training.metrics import mask_iou

# SAM's loss weights (20 x focal + dice, and the IoU head's MSE), written once in ``checkpoints.SAM_RECIPE_DEFAULTS``
SAM_FOCAL_WEIGHT, SAM_DICE_WEIGHT, SAM_IOU_WEIGHT = (
    float(SAM_RECIPE_DEFAULTS[k]) for k in ("focal_weight", "dice_weight", "iou_weight"))


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


class _FocalDice(torch.autograd.Function):
    """Focal and dice losses of the same logits in one pass, with a hand-written backward.

    Autograd through ``sigmoid_focal_loss`` + ``dice_loss`` keeps about eight full-size float
    tensors per call for the backward (sigmoid, cross-entropy, p_t, powers, products); this keeps
    only the logits and the targets and recomputes the sigmoid in the backward. With s = x where
    t else -x (so p_t = sigmoid(s), log p_t = logsigmoid(s)), per pixel:

    - focal = -a_t (1 - p_t)^g log p_t, d focal / d s = a_t (1 - p_t)^g (g p_t log p_t - (1 - p_t)),
      and d s / d x = +1 where t else -1;
    - dice = 1 - N / D with N = 2 sum(p t) + eps, D = sum(p) + sum(t) + eps,
      d dice / d p_i = (N - 2 t_i D) / D^2 and d p / d x = p (1 - p).
    """

    @staticmethod
    def _terms(logits: Tensor, targets: Tensor, alpha: float) -> tuple[Tensor, Tensor, Tensor, Tensor | float]:
        """x (at least float32), the sign of s = x * sign, log p_t and the alpha weight a_t."""
        x = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> f32, f64 kept
        sign = torch.where(targets, 1.0, -1.0)
        weight = torch.where(targets, alpha, 1.0 - alpha) if alpha >= 0 else 1.0
        return x, sign, F.logsigmoid(x * sign), weight

    @staticmethod
    def forward(ctx: Any, logits: Tensor, targets: Tensor, alpha: float, gamma: float, eps: float):
        x, _, log_pt, weight = _FocalDice._terms(logits, targets, alpha)
        one_minus = 1.0 - log_pt.exp()
        focal = (-(weight * one_minus.pow(gamma)) * log_pt).mean(dim=(-2, -1))
        prob = torch.sigmoid(x)
        t = targets.to(prob.dtype)
        numerator = 2.0 * (prob * t).sum(dim=(-2, -1)) + eps
        denominator = prob.sum(dim=(-2, -1)) + t.sum(dim=(-2, -1)) + eps
        ctx.save_for_backward(logits, targets, numerator, denominator)
        ctx.options = (alpha, gamma)
        return focal, 1.0 - numerator / denominator

    @staticmethod
    def backward(ctx: Any, grad_focal: Tensor, grad_dice: Tensor):
        logits, targets, numerator, denominator = ctx.saved_tensors
        alpha, gamma = ctx.options
        x, sign, log_pt, weight = _FocalDice._terms(logits, targets, alpha)
        p_t = log_pt.exp()
        one_minus = 1.0 - p_t
        pixels = x.shape[-1] * x.shape[-2]
        d_focal = weight * one_minus.pow(gamma) * (gamma * p_t * log_pt - one_minus) * sign
        grad = d_focal * (grad_focal / pixels)[..., None, None]
        prob = torch.where(targets, p_t, one_minus)
        d_dice = (numerator[..., None, None] - 2.0 * targets * denominator[..., None, None]) \
            / denominator.square()[..., None, None]
        grad = grad + d_dice * (prob * (1.0 - prob)) * grad_dice[..., None, None]
        return grad.to(logits.dtype), None, None, None, None


def focal_dice_loss(
    logits: Tensor, targets: Tensor, *, alpha: float = 0.25, gamma: float = 2.0, eps: float = 1.0
) -> tuple[Tensor, Tensor]:
    """``(sigmoid_focal_loss(logits, targets), dice_loss(logits, targets))`` in one fused pass.

    Same values and gradients as the two functions (tests check both), about a third of their
    backward memory and time: the training step's choice.

    Args:
        logits: (..., H, W) unthresholded mask logits.
        targets: (..., H, W) bool ground truth.
        alpha, gamma: focal loss parameters (``alpha < 0``: no alpha weighting).
        eps: dice smoothing.

    Returns:
        focal (...) and dice (...), one value per mask.
    """
    return _FocalDice.apply(logits, targets.bool(), float(alpha), float(gamma), float(eps))


def sam_loss(
    logits: Tensor, iou_pred: Tensor, gt: Tensor, *, focal_weight: float = SAM_FOCAL_WEIGHT,
    dice_weight: float = SAM_DICE_WEIGHT, iou_weight: float = SAM_IOU_WEIGHT, min_only: bool = False,
    mask_weight: Tensor | None = None, rows: Tensor | None = None, pixels: Tensor | None = None,
    iou_loss: Literal["mse", "l1"] = "mse", present: Tensor | None = None,
) -> dict[str, Tensor]:
    """SAM's loss for K prompts with M outputs each.

    Default: output m of prompt k is compared with its own target ``gt[k, m]`` (the recipe orders
    ``gt`` by ``assign_outputs`` first); the focal and dice terms are means over the K x M masks.

    ``min_only=True`` (the SAM paper's variant): ``gt`` holds one target per prompt, every
    output is compared with it, and per prompt only the output with the lowest mask loss
    ``focal_weight * focal + dice_weight * dice`` is reported and backpropagated; the focal and
    dice terms are means over K of that output's losses.

    ``mask_weight`` (K, M) bool: only these outputs get the focal and dice terms (means over them); the
    others train their IoU prediction alone (an output left without a distinct GT mask, ``distinct``
    pairing). In every mode the IoU term is the MSE, over all K x M outputs, between ``iou_pred`` and
    the true IoU of ``logits > 0`` with that output's target (no gradient through the true IoU).

    Args:
        logits: (K, M, H, W) mask logits at the resolution of ``gt``.
        iou_pred: (K, M) the IoU head's predictions.
        gt: (K, M, H, W) bool targets, or (K, 1, H, W) with ``min_only``.
        focal_weight, dice_weight, iou_weight: weights of the terms in "total".
        min_only: backpropagate only the best output per prompt.
        rows: (K,) bool: only these prompts count, in every term (the others pad the static-K path's
            batch to a fixed size: no loss, no gradient).
        pixels: () the number of pixels each mask's focal mean is over (default H x W): the static-K path
            scores logits over the whole training frame with -1e4 outside the image, where every term is 0.
        iou_loss: ``mse`` (SAM) or ``l1`` (SAM 2.1's ``iou_use_l1_loss``) between the IoU head and the true IoU.
        present: (K,) bool, SAM 2.1's rule (Meta's ``target_obj``, with ``object_loss``): a prompt's mask and IoU
            terms count only when this is True (its target has a pixel); the means still divide by every prompt.

    Returns:
        Scalars "focal", "dice", "iou" and "total" = focal_weight * focal + dice_weight * dice
        + iou_weight * iou.
    """
    _check_shapes(logits, iou_pred, gt, min_only)
    gt = gt.bool().expand(logits.shape)
    focal, dice = focal_dice_loss(logits, gt)  # (K, M) each
    if pixels is not None:
        focal = focal * (logits.shape[-2] * logits.shape[-1] / pixels)
    iou = _iou_term(logits, iou_pred, gt, iou_loss, rows, present)
    if min_only:
        best = (focal_weight * focal + dice_weight * dice).detach().argmin(dim=1, keepdim=True)  # (K, 1)
        focal, dice = focal.gather(1, best), dice.gather(1, best)
    w = torch.ones_like(focal) if mask_weight is None else mask_weight.to(focal.dtype)
    w = w if rows is None else w * rows.to(focal.dtype)[:, None]
    count = w.sum().clamp(min=1.0)  # every prompt counts, as Meta divides by every object: empty targets add 0
    w = w if present is None else w * present.to(focal.dtype)[:, None]
    focal, dice = (focal * w).sum() / count, (dice * w).sum() / count
    total = focal_weight * focal + dice_weight * dice + iou_weight * iou
    return {"focal": focal, "dice": dice, "iou": iou, "total": total}


def object_loss(object_logits: Tensor, present: Tensor, rows: Tensor | None = None) -> Tensor:
    """SAM 2.1's object-score loss (Meta's ``loss_class``: its focal loss with alpha -1 and gamma 0): the binary
    cross-entropy of each prompt's object-score logit (K, 1) against ``present`` (K,) bool, "the target has a
    pixel", a mean over the K prompts (those of ``rows`` only, when given)."""
    bce = F.binary_cross_entropy_with_logits(object_logits.float().reshape(-1), present.float(), reduction="none")
    return bce.mean() if rows is None else (bce * rows).sum() / rows.sum().clamp(min=1)


def _iou_term(logits: Tensor, iou_pred: Tensor, gt: Tensor, kind: str, rows: Tensor | None,
              present: Tensor | None) -> Tensor:
    """The IoU head's loss: MSE or L1 of ``iou_pred`` against the true IoU of ``logits > 0`` with ``gt`` (no
    gradient through it), a mean over the K x M outputs (rows outside ``rows`` left out; outputs of an empty
    target count as 0)."""
    true_iou = mask_iou(logits.detach() > 0, gt)  # (K, M)
    diff = iou_pred.float() - true_iou
    err = diff.abs() if kind == "l1" else diff.square()
    weight = torch.ones(err.shape[0], dtype=err.dtype, device=err.device) if present is None else present.to(err.dtype)
    count = torch.tensor(float(err.shape[0]), device=err.device)
    if rows is not None:
        weight, count = weight * rows.to(err.dtype), rows.to(err.dtype).sum().clamp(min=1.0)
    return (err * weight[:, None]).sum() / (count * err.shape[1])


def _check_shapes(logits: Tensor, iou_pred: Tensor, gt: Tensor, min_only: bool) -> None:
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


Pairing = Literal["distinct", "optimal", "min", "fixed"]
_PERMUTATIONS = torch.tensor(list(itertools.permutations(range(3))))  # (6, 3): output m -> GT perm[m]


@torch.no_grad()
def pairwise_mask_loss(
    logits: Tensor, gt: Tensor, *, focal_weight: float | Tensor = SAM_FOCAL_WEIGHT, dice_weight: float = SAM_DICE_WEIGHT,
    alpha: float = 0.25, gamma: float = 2.0, eps: float = 1.0,
) -> Tensor:
    """``focal_weight * focal + dice_weight * dice`` of every output against every GT mask, without gradient.

    Both losses are sums over pixels of a per-output term times the GT (or its complement), so the
    (M x J) table costs one elementwise pass over the outputs and two batched matmuls, not M x J losses.

    Args:
        logits: (K, M, H, W) mask logits.
        gt: (K, J, H, W) bool GT masks.
    Returns:
        (K, M, J): entry [k, m, j] is the loss of output m of prompt k against gt[k, j], equal to
        ``focal_weight * sigmoid_focal_loss(logits[k, m], gt[k, j]) + dice_weight * dice_loss(...)``,
        in float32 under autocast too (which would run the matmuls in bf16), as evaluation computes it.
    """
    with torch.autocast(logits.device.type, enabled=False):
        x = logits.float().flatten(2)  # (K, M, P)
        g = gt.to(x.dtype).flatten(2)  # (K, J, P)
        prob = torch.sigmoid(x)
        log_p, log_not_p = F.logsigmoid(x), F.logsigmoid(-x)
        on = -(1.0 - prob) ** gamma * log_p  # focal of a pixel whose GT is 1
        off = -prob ** gamma * log_not_p  # ... and 0
        if alpha >= 0:
            on, off = on * alpha, off * (1.0 - alpha)
        pixels = x.shape[-1]
        focal = (off.sum(-1, keepdim=True) + torch.bmm(on - off, g.transpose(1, 2))) / pixels  # (K, M, J)
        intersection = torch.bmm(prob, g.transpose(1, 2))
        dice = 1.0 - (2.0 * intersection + eps) / (prob.sum(-1, keepdim=True) + g.sum(-1)[:, None, :] + eps)
    return focal_weight * focal + dice_weight * dice


def assign_outputs(
    logits: Tensor, gt: Tensor, pairing: Pairing, *, focal_weight: float | Tensor = SAM_FOCAL_WEIGHT,
    dice_weight: float = SAM_DICE_WEIGHT,
) -> Tensor:
    """Which GT mask each of the 3 outputs trains against.

    ``distinct``: the assignment of lowest total mask loss of the prompt's *distinct* GT masks to
    outputs, one output each; an output left over gets -1 (no mask loss). ``point_sample`` and
    ``box_sample`` repeat a mask when fewer than 3 fit the prompt: with one distinct mask (a click on a
    label map, where masks do not nest) only the output closest to it trains on it, the SAM paper's
    min-loss; with three, every output keeps the GT it is closest to. ``optimal``: the same over the 3
    slots as they are (a repeated mask trains several outputs). ``fixed``: output m against GT m (GT big
    to small). ``min`` is the SAM paper's min-loss and is not an assignment (see ``sam_loss``).

    Args:
        logits: (K, 3, H, W) mask logits; gt: (K, 3, H, W) bool GT masks.
    Returns:
        (K, 3) int64: output m of prompt k is paired with ``gt[k, result[k, m]]``; -1: with none.
    """
    k = logits.shape[0]
    if pairing == "fixed":
        return torch.arange(3, device=logits.device).expand(k, 3)
    if pairing not in ("optimal", "distinct"):
        raise ValueError(f"assign_outputs: pairing must be 'distinct', 'optimal' or 'fixed', got {pairing!r}")
    cost = pairwise_mask_loss(logits, gt, focal_weight=focal_weight, dice_weight=dice_weight)  # (K, 3, 3)
    perms = _PERMUTATIONS.to(logits.device)
    slots = torch.arange(3, device=logits.device)
    per_output = cost[:, slots, perms]  # (K, 6, 3): output m's cost in permutation p
    if pairing == "optimal":
        return perms[per_output.sum(-1).argmin(1)]
    first = first_occurrences(gt)  # (K, 3): the slot holds a mask not seen in an earlier slot
    counted = first[:, perms]  # (K, 6, 3): output m's slot in permutation p counts
    chosen = perms[(per_output * counted).sum(-1).argmin(1)]  # (K, 3)
    return torch.where(first.gather(1, chosen), chosen, torch.full_like(chosen, -1))


def first_occurrences(gt: Tensor) -> Tensor:
    """(K, J, H, W) bool masks -> (K, J) bool: mask j differs from every mask before it (its first copy)."""
    flat = gt.flatten(2)
    same = (flat[:, :, None] == flat[:, None]).all(-1)  # (K, J, J)
    earlier = torch.ones(same.shape[1:], dtype=torch.bool, device=gt.device).tril(-1)  # [j, i]: i < j
    return ~(same & earlier).any(-1)
