from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision

from lora_sam.training.losses import dice_loss, focal_dice_loss, sam_loss, sigmoid_focal_loss
from lora_sam.training.metrics import mask_iou


def _random(shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g, dtype=torch.float64) * 3.0
    targets = torch.rand(shape, generator=g) > 0.6
    return logits.float(), targets


def _focal_reference(logits: np.ndarray, targets: np.ndarray, alpha: float, gamma: float) -> np.ndarray:
    *lead, h, w = logits.shape
    out = np.zeros(lead)
    for index in np.ndindex(*lead):
        total = 0.0
        for y in range(h):
            for x in range(w):
                p = 1.0 / (1.0 + math.exp(-float(logits[index + (y, x)])))
                if targets[index + (y, x)]:
                    total += -alpha * (1.0 - p) ** gamma * math.log(p)
                else:
                    total += -(1.0 - alpha) * p**gamma * math.log(1.0 - p)
        out[index] = total / (h * w)
    return out


def _dice_reference(logits: np.ndarray, targets: np.ndarray, eps: float) -> np.ndarray:
    *lead, h, w = logits.shape
    out = np.zeros(lead)
    for index in np.ndindex(*lead):
        inter = prob_sum = target_sum = 0.0
        for y in range(h):
            for x in range(w):
                p = 1.0 / (1.0 + math.exp(-float(logits[index + (y, x)])))
                t = float(targets[index + (y, x)])
                inter += p * t
                prob_sum += p
                target_sum += t
        out[index] = 1.0 - (2.0 * inter + eps) / (prob_sum + target_sum + eps)
    return out


def _iou_reference(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    *lead, h, w = pred.shape
    out = np.zeros(lead)
    for index in np.ndindex(*lead):
        inter = union = 0
        for y in range(h):
            for x in range(w):
                a, b = bool(pred[index + (y, x)]), bool(gt[index + (y, x)])
                inter += a and b
                union += a or b
        out[index] = 1.0 if union == 0 else inter / union
    return out


@pytest.mark.parametrize(("alpha", "gamma"), [(0.25, 2.0), (0.5, 0.0), (0.8, 3.0)])
def test_focal_matches_per_pixel_formula(alpha: float, gamma: float) -> None:
    logits, targets = _random((2, 3, 5, 4))
    got = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma)
    assert got.shape == (2, 3)
    want = _focal_reference(logits.numpy(), targets.numpy(), alpha, gamma)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("alpha", [0.25, -1.0])
def test_focal_matches_torchvision(alpha: float) -> None:
    logits, targets = _random((3, 2, 8, 7), seed=1)
    got = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=2.0)
    want = torchvision.ops.sigmoid_focal_loss(
        logits, targets.float(), alpha=alpha, gamma=2.0, reduction="none"
    )
    torch.testing.assert_close(got, want.mean(dim=(-2, -1)))


@pytest.mark.parametrize("eps", [1.0, 1e-3])
def test_dice_matches_per_pixel_formula(eps: float) -> None:
    logits, targets = _random((2, 3, 4, 6), seed=2)
    got = dice_loss(logits, targets, eps=eps)
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got.numpy(), _dice_reference(logits.numpy(), targets.numpy(), eps), rtol=1e-5)


def test_dice_near_zero_for_confident_correct_prediction() -> None:
    targets = torch.zeros(1, 6, 6, dtype=torch.bool)
    targets[0, 1:4, 2:5] = True
    logits = torch.where(targets, 20.0, -20.0)
    assert dice_loss(logits, targets).item() < 1e-6
    assert dice_loss(-logits, targets).item() > 0.9


def test_mask_iou_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(3)
    pred = torch.rand(4, 3, 5, 5, generator=g) > 0.5
    gt = torch.rand(4, 3, 5, 5, generator=g) > 0.5
    pred[0, 0] = False
    gt[0, 0] = False
    pred[0, 1] = False
    got = mask_iou(pred, gt)
    np.testing.assert_allclose(got.numpy(), _iou_reference(pred.numpy(), gt.numpy()), rtol=1e-6)
    assert got[0, 0].item() == 1.0
    assert got[0, 1].item() == 0.0


def test_sam_loss_default_pairs_each_output_with_its_gt() -> None:
    logits, gt = _random((3, 3, 6, 5), seed=4)
    iou_pred = torch.rand(3, 3, generator=torch.Generator().manual_seed(5))
    out = sam_loss(logits, iou_pred, gt)
    assert set(out) == {"focal", "dice", "iou", "total"}
    assert all(v.dim() == 0 for v in out.values())
    focal = _focal_reference(logits.numpy(), gt.numpy(), 0.25, 2.0).mean()
    dice = _dice_reference(logits.numpy(), gt.numpy(), 1.0).mean()
    true_iou = _iou_reference(logits.numpy() > 0, gt.numpy())
    iou = ((iou_pred.numpy() - true_iou) ** 2).mean()
    np.testing.assert_allclose(out["focal"].item(), focal, rtol=1e-5)
    np.testing.assert_allclose(out["dice"].item(), dice, rtol=1e-5)
    np.testing.assert_allclose(out["iou"].item(), iou, rtol=1e-5)
    np.testing.assert_allclose(out["total"].item(), 20.0 * focal + dice + iou, rtol=1e-5)


def test_sam_loss_weights_scale_total() -> None:
    logits, gt = _random((2, 3, 4, 4), seed=6)
    iou_pred = torch.full((2, 3), 0.5)
    out = sam_loss(logits, iou_pred, gt, focal_weight=3.0, dice_weight=0.5, iou_weight=7.0)
    want = 3.0 * out["focal"] + 0.5 * out["dice"] + 7.0 * out["iou"]
    torch.testing.assert_close(out["total"], want)
    zero = sam_loss(logits, iou_pred, gt, focal_weight=0.0, dice_weight=0.0, iou_weight=0.0)
    assert zero["total"].item() == 0.0
    torch.testing.assert_close(zero["focal"], out["focal"])


def test_iou_term_sends_no_gradient_to_logits() -> None:
    logits, gt = _random((2, 3, 4, 4), seed=7)
    logits.requires_grad_(True)
    iou_pred = torch.rand(2, 3).requires_grad_(True)
    out = sam_loss(logits, iou_pred, gt)
    grad_logits, grad_iou = torch.autograd.grad(
        out["iou"], [logits, iou_pred], allow_unused=True, retain_graph=True
    )
    assert grad_logits is None
    assert grad_iou is not None and (grad_iou != 0).all()
    out["total"].backward()
    assert logits.grad is not None and (logits.grad != 0).any(dim=(-2, -1)).all()


def test_min_only_backprops_only_best_output() -> None:
    g = torch.Generator().manual_seed(8)
    gt = torch.rand(2, 1, 6, 6, generator=g) > 0.5
    target_logits = torch.where(gt, 4.0, -4.0)
    noise = torch.randn(2, 3, 6, 6, generator=g)
    best = torch.tensor([1, 2])
    logits = noise * 2.0
    logits[torch.arange(2), best] = target_logits[:, 0] + 0.1 * noise[torch.arange(2), best]
    logits.requires_grad_(True)
    iou_pred = torch.rand(2, 3, generator=g).requires_grad_(True)

    out = sam_loss(logits, iou_pred, gt, min_only=True)
    out["total"].backward()

    flat = logits.grad.abs().flatten(2).sum(-1)
    for k in range(2):
        for m in range(3):
            assert (flat[k, m] > 0) == (m == best[k].item())
    assert (iou_pred.grad != 0).all()

    expanded = gt.expand(2, 3, 6, 6).numpy()
    focal = _focal_reference(logits.detach().numpy(), expanded, 0.25, 2.0)
    dice = _dice_reference(logits.detach().numpy(), expanded, 1.0)
    rows = np.arange(2)
    np.testing.assert_allclose(out["focal"].item(), focal[rows, best.numpy()].mean(), rtol=1e-5)
    np.testing.assert_allclose(out["dice"].item(), dice[rows, best.numpy()].mean(), rtol=1e-5)
    true_iou = _iou_reference(logits.detach().numpy() > 0, expanded)
    np.testing.assert_allclose(
        out["iou"].item(), ((iou_pred.detach().numpy() - true_iou) ** 2).mean(), rtol=1e-5
    )


def test_min_only_picks_lowest_weighted_mask_loss() -> None:
    logits, gt = _random((4, 3, 5, 5), seed=9)
    out = sam_loss(logits, torch.zeros(4, 3), gt[:, :1], min_only=True)
    expanded = gt[:, :1].expand(4, 3, 5, 5)
    per_output = 20.0 * sigmoid_focal_loss(logits, expanded) + dice_loss(logits, expanded)
    torch.testing.assert_close(20.0 * out["focal"] + out["dice"], per_output.min(dim=1).values.mean())


@pytest.mark.parametrize(
    ("logits_shape", "iou_shape", "gt_shape", "min_only"),
    [
        ((2, 3, 4, 4), (2, 3), (2, 1, 4, 4), False),
        ((2, 3, 4, 4), (2, 3), (2, 3, 4, 4), True),
        ((2, 3, 4, 4), (2, 2), (2, 3, 4, 4), False),
        ((3, 4, 4), (3,), (3, 4, 4), False),
        ((0, 3, 4, 4), (0, 3), (0, 3, 4, 4), False),
    ],
)
def test_sam_loss_rejects_bad_shapes(
    logits_shape: tuple[int, ...], iou_shape: tuple[int, ...], gt_shape: tuple[int, ...], min_only: bool
) -> None:
    with pytest.raises(ValueError):
        sam_loss(
            torch.zeros(logits_shape),
            torch.zeros(iou_shape),
            torch.zeros(gt_shape, dtype=torch.bool),
            min_only=min_only,
        )


@pytest.mark.parametrize(("alpha", "gamma"), [(0.25, 2.0), (-1.0, 2.0), (0.7, 0.0), (0.25, 3.0)])
def test_fused_focal_dice_matches_autograd_of_the_plain_losses(alpha: float, gamma: float) -> None:
    logits, targets = _random((3, 2, 9, 7), seed=4)
    targets[0, 0] = False  # an empty target
    fused_x = logits.clone().requires_grad_()
    plain_x = logits.clone().requires_grad_()
    focal, dice = focal_dice_loss(fused_x, targets, alpha=alpha, gamma=gamma)
    want_focal = sigmoid_focal_loss(plain_x, targets, alpha=alpha, gamma=gamma)
    want_dice = dice_loss(plain_x, targets)
    torch.testing.assert_close(focal, want_focal, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(dice, want_dice, rtol=1e-5, atol=1e-7)
    weights = torch.rand(2, 3, 2, generator=torch.Generator().manual_seed(5))
    ((weights[0] * focal).sum() + (weights[1] * dice).sum()).backward()
    ((weights[0] * want_focal).sum() + (weights[1] * want_dice).sum()).backward()
    torch.testing.assert_close(fused_x.grad, plain_x.grad, rtol=1e-4, atol=1e-8)


def test_fused_focal_dice_passes_gradcheck_in_float64() -> None:
    logits, targets = _random((2, 3, 6, 5), seed=6)
    x = logits.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda v: focal_dice_loss(v, targets), (x,))


def test_fused_focal_dice_keeps_bfloat16_gradients() -> None:
    logits, targets = _random((2, 3, 6, 5), seed=7)
    x = logits.to(torch.bfloat16).requires_grad_()
    focal, dice = focal_dice_loss(x, targets)
    (focal.sum() + dice.sum()).backward()
    assert focal.dtype == torch.float32 and x.grad.dtype == torch.bfloat16
    assert torch.isfinite(x.grad.float()).all() and x.grad.float().abs().sum() > 0


def test_pairwise_mask_loss_equals_every_pair_of_plain_losses() -> None:
    from lora_sam.training.losses import pairwise_mask_loss

    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 3, 12, 17, generator=gen) * 4
    gt = torch.rand(4, 2, 12, 17, generator=gen) > 0.5
    table = pairwise_mask_loss(logits, gt, focal_weight=20.0, dice_weight=1.0)
    for m in range(3):
        for j in range(2):
            expected = 20.0 * sigmoid_focal_loss(logits[:, m], gt[:, j]) + dice_loss(logits[:, m], gt[:, j])
            assert torch.allclose(table[:, m, j], expected, rtol=1e-5, atol=1e-6)


def test_assign_outputs_is_the_permutation_of_lowest_total_loss() -> None:
    import itertools

    from lora_sam.training.losses import assign_outputs

    gen = torch.Generator().manual_seed(6)
    gt = torch.rand(8, 3, 10, 10, generator=gen) > 0.5
    order = torch.stack([torch.randperm(3, generator=gen) for _ in range(8)])  # outputs shuffled GT + noise
    logits = (gt.float()[torch.arange(8)[:, None], order] * 2 - 1) * 3 + torch.randn(8, 3, 10, 10, generator=gen)
    found = assign_outputs(logits, gt, "distinct")
    for k in range(8):
        def total(perm: tuple[int, ...], k: int = k) -> float:
            return sum(float(20 * sigmoid_focal_loss(logits[k, m], gt[k, perm[m]]) + dice_loss(logits[k, m], gt[k, perm[m]]))
                       for m in range(3))
        assert tuple(found[k].tolist()) == min(itertools.permutations(range(3)), key=total)
    assert torch.equal(found, order)  # each output found the GT it was made from
    assert torch.equal(assign_outputs(logits, gt, "fixed"), torch.arange(3).expand(8, 3))


def test_pairing_is_float32_under_autocast() -> None:
    """bf16 autocast (CPU here, CUDA in training) would run the pairing's matmuls in bf16; evaluation
    pairs in float32. The table under autocast equals the one without it exactly."""
    from lora_sam.training.losses import assign_outputs, pairwise_mask_loss

    torch.manual_seed(0)
    logits = torch.randn(6, 3, 40, 50) * 4
    gt = torch.rand(6, 3, 40, 50) > 0.6
    plain = pairwise_mask_loss(logits, gt)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = pairwise_mask_loss(logits, gt)
        paired = assign_outputs(logits, gt, "distinct")
    assert under.dtype == torch.float32
    assert torch.equal(under, plain)
    assert torch.equal(paired, assign_outputs(logits, gt, "distinct"))


def test_distinct_pairing_matches_a_brute_force_over_the_distinct_masks() -> None:
    """For GT sets with 1, 2 or 3 distinct masks (repeated as point_sample / box_sample pad them), the
    assignment is the injective map of the distinct masks to outputs of lowest total loss; outputs left
    over get -1. Reference: every injective map, enumerated, scored with sigmoid_focal_loss + dice_loss."""
    import itertools

    from lora_sam.training.losses import assign_outputs

    torch.manual_seed(1)
    for layout in ([0, 0, 0], [0, 1, 1], [0, 0, 1], [0, 1, 2]):
        logits = torch.randn(5, 3, 12, 14) * 3
        masks = torch.rand(5, 3, 12, 14) > 0.5
        gt = masks[:, layout]
        paired = assign_outputs(logits, gt, "distinct")
        distinct = sorted(set(layout), key=layout.index)
        slot_of = {m: layout.index(m) for m in distinct}
        for k in range(5):
            cost = [[float(20 * sigmoid_focal_loss(logits[k, m], gt[k, j]) + dice_loss(logits[k, m], gt[k, j]))
                     for j in range(3)] for m in range(3)]
            best = min(itertools.permutations(range(3), len(distinct)),
                       key=lambda outs, cost=cost: sum(cost[o][slot_of[m]] for o, m in zip(outs, distinct)))
            expected = [-1, -1, -1]
            for o, m in zip(best, distinct):
                expected[o] = slot_of[m]
            assert paired[k].tolist() == expected, (layout, k)
