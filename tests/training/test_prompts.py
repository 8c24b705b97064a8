"""Prompt simulation: regions and labels by indexing, uniformity, noise statistics, brute-force clicks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from lora_sam.training.prompts import (
    click_points,
    masks_to_boxes,
    noisy_boxes,
    sample_error_points,
    sample_points,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_masks(k: int, height: int, width: int, seed: int, p: float = 0.3) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.random((k, height, width)) < p)


def _at(masks: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    x, y = points[:, 0].long(), points[:, 1].long()
    return masks[torch.arange(masks.shape[0]), y, x]


def _small_mask() -> torch.Tensor:
    mask = torch.zeros(6, 7, dtype=torch.bool)
    for y, x in [(0, 0), (0, 6), (1, 3), (2, 2), (2, 3), (3, 5), (4, 1), (5, 0), (5, 4), (5, 6)]:
        mask[y, x] = True
    return mask


def _chi_square_p(points: torch.Tensor, region: torch.Tensor) -> float:
    ys, xs = torch.nonzero(region, as_tuple=True)
    index = {(int(x), int(y)): i for i, (x, y) in enumerate(zip(xs, ys))}
    counts = np.zeros(len(index))
    for x, y in points.long().tolist():
        counts[index[(x, y)]] += 1
    return float(chisquare(counts).pvalue)


def test_sample_points_lie_on_their_masks() -> None:
    masks = _random_masks(64, 9, 13, seed=1, p=0.05)
    masks[0] = False
    masks[0, 8, 12] = True
    points = sample_points(masks, _gen())
    assert points.shape == (64, 2) and points.dtype == torch.float32
    assert _at(masks, points).all()
    assert points[0].tolist() == [12.0, 8.0]


def test_sample_points_uniform_over_the_mask() -> None:
    mask = _small_mask()
    points = sample_points(mask.expand(20000, -1, -1), _gen(3))
    assert _at(mask.expand(20000, -1, -1), points).all()
    assert _chi_square_p(points, mask) > 1e-3


def test_sample_points_same_seed_same_output() -> None:
    masks = _random_masks(16, 20, 30, seed=2)
    assert torch.equal(sample_points(masks, _gen(7)), sample_points(masks, _gen(7)))
    assert not torch.equal(sample_points(masks, _gen(7)), sample_points(masks, _gen(8)))


def test_noisy_boxes_noise_statistics() -> None:
    k = 20000
    box = torch.tensor([100.0, 200.0, 160.0, 240.0])  # width 60, height 40
    out = noisy_boxes(box.expand(k, 4), _gen(), image_size=(400, 400))
    noise = out - box
    expected_std = torch.tensor([6.0, 4.0, 6.0, 4.0])
    assert torch.allclose(noise.std(dim=0), expected_std, rtol=0.03)
    assert noise.mean(dim=0).abs().max() < 0.15


def test_noisy_boxes_clip_noise_at_max_noise() -> None:
    box = torch.tensor([500.0, 500.0, 1500.0, 1500.0])  # std 100 px, clipped at 20
    out = noisy_boxes(box.expand(5000, 4), _gen(), image_size=(2000, 2000))
    noise = out - box
    assert noise.abs().max() <= 20.0 + 1e-4
    assert (noise.abs() > 19.999).float().mean() > 0.7


def test_noisy_boxes_stay_ordered_and_in_the_image() -> None:
    boxes = torch.tensor([[10.0, 10.0, 12.0, 11.0], [0.0, 0.0, 49.0, 29.0], [40.0, 20.0, 49.0, 29.0]])
    out = noisy_boxes(boxes.repeat(2000, 1), _gen(), image_size=(30, 50), std_fraction=2.0)
    assert (out[:, 0] <= out[:, 2]).all() and (out[:, 1] <= out[:, 3]).all()
    assert out[:, [0, 2]].min() >= 0 and out[:, [0, 2]].max() <= 49
    assert out[:, [1, 3]].min() >= 0 and out[:, [1, 3]].max() <= 29
    assert torch.equal(out, noisy_boxes(boxes.repeat(2000, 1), _gen(), image_size=(30, 50), std_fraction=2.0))


def test_masks_to_boxes_reexported_and_inclusive() -> None:
    mask = torch.zeros(1, 5, 6, dtype=torch.bool)
    mask[0, 1:4, 2:6] = True
    assert masks_to_boxes(mask).tolist() == [[2.0, 1.0, 5.0, 3.0]]


def test_sample_error_points_region_and_labels() -> None:
    gt = _random_masks(300, 11, 14, seed=4)
    pred = _random_masks(300, 11, 14, seed=5)
    pred[:10] = gt[:10]
    points, labels = sample_error_points(pred, gt, _gen())
    assert points.shape == (300, 2) and labels.shape == (300,) and labels.dtype == torch.int64
    assert (labels[:10] == -1).all()
    assert (points[:, 0] >= 0).all() and (points[:, 0] <= 13).all()
    assert (points[:, 1] >= 0).all() and (points[:, 1] <= 10).all()
    rows = labels != -1
    assert _at(pred ^ gt, points)[rows].all()
    assert torch.equal(labels[rows], _at(gt, points)[rows].long())
    assert torch.equal(labels[rows] == 0, _at(pred, points)[rows])
    assert {0, 1} <= set(labels.tolist())


def test_sample_error_points_uniform_over_the_error_region() -> None:
    gt = _small_mask()
    pred = torch.zeros_like(gt)
    pred[3:5, 2:5] = True
    pred[1, 3] = True  # a true positive: not an error
    k = 20000
    points, labels = sample_error_points(pred.expand(k, -1, -1), gt.expand(k, -1, -1), _gen(5))
    assert _chi_square_p(points, pred ^ gt) > 1e-3
    assert torch.equal(labels == 1, _at(gt.expand(k, -1, -1), points))


def test_sample_error_points_same_seed_same_output() -> None:
    gt, pred = _random_masks(16, 20, 30, seed=6), _random_masks(16, 20, 30, seed=7)
    a, b = sample_error_points(pred, gt, _gen(1)), sample_error_points(pred, gt, _gen(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def _naive_distances(region: np.ndarray) -> np.ndarray:
    """Distance of each region pixel to the nearest pixel outside it (the image border counts), by loops."""
    height, width = region.shape
    outside = [(y, x) for y in range(-1, height + 1) for x in range(-1, width + 1)
               if not (0 <= y < height and 0 <= x < width and region[y, x])]
    out = np.zeros(region.shape)
    for y in range(height):
        for x in range(width):
            if region[y, x]:
                out[y, x] = min(math.sqrt((y - oy) ** 2 + (x - ox) ** 2) for oy, ox in outside)
    return out


def _naive_click(pred: np.ndarray, gt: np.ndarray, not_clicked: np.ndarray | None = None) -> tuple[tuple[int, int], int]:
    """RITM's clicker (isegm/inference/clicker.py) written out: distances over each whole error region, the
    clicked pixels' distances then set to 0; the sign is that of the region with the larger maximal distance
    (ties negative); the click is that region's first maximal pixel."""
    allowed = np.ones_like(gt) if not_clicked is None else not_clicked
    fn_d, fp_d = _naive_distances(gt & ~pred) * allowed, _naive_distances(pred & ~gt) * allowed
    if max(fn_d.max(), fp_d.max()) == 0:
        return (-1, -1), -1
    positive = fn_d.max() > fp_d.max()
    d = fn_d if positive else fp_d
    ys, xs = np.nonzero(d == d.max())  # row-major order
    return (int(xs[0]), int(ys[0])), int(positive)


def test_click_points_match_the_reference_clicker() -> None:
    rng = np.random.default_rng(8)
    k, height, width = 40, 9, 11
    gt = np.zeros((k, height, width), bool)
    pred = np.zeros((k, height, width), bool)
    for i in range(k):
        for masks in (gt, pred):
            for _ in range(rng.integers(0, 3)):
                x0, y0 = rng.integers(0, width), rng.integers(0, height)
                masks[i, y0 : y0 + rng.integers(1, 8), x0 : x0 + rng.integers(1, 9)] = True
    pred[0] = gt[0]
    not_clicked = rng.random((k, height, width)) > 0.1
    for allowed in (None, not_clicked):
        points, labels = click_points(torch.from_numpy(pred), torch.from_numpy(gt),
                                      not_clicked=None if allowed is None else torch.from_numpy(allowed))
        assert points.shape == (k, 2) and labels.dtype == torch.int64
        for i in range(k):
            point, label = _naive_click(pred[i], gt[i], None if allowed is None else allowed[i])
            assert int(labels[i]) == label, i
            if label != -1:
                assert tuple(int(v) for v in points[i].tolist()) == point
                x, y = point
                assert bool(gt[i, y, x]) == bool(label) and bool(pred[i, y, x]) != bool(label)
                assert allowed is None or allowed[i, y, x]
        assert labels[0] == -1 and (points[0] >= 0).all()


def test_a_click_beside_an_earlier_one_as_ritm_does() -> None:
    """An 11x11 image, a 7x7 false-negative block (rows and columns 2..8) whose centre (5, 5) was clicked:
    RITM's next click is (4, 4), the most interior pixel left of the whole block's distances; removing the
    clicked pixel before the distance transform (a hole in the region) would give (3, 3)."""
    gt = torch.zeros(1, 11, 11, dtype=torch.bool)
    gt[0, 2:9, 2:9] = True
    pred = torch.zeros_like(gt)
    not_clicked = torch.ones_like(gt)
    not_clicked[0, 5, 5] = False
    points, labels = click_points(pred, gt, not_clicked=not_clicked)
    assert labels.tolist() == [1] and points.tolist() == [[4.0, 4.0]]
    assert _naive_click(pred[0].numpy(), gt[0].numpy(), not_clicked[0].numpy()) == ((4, 4), 1)


def test_a_compact_false_positive_beats_a_larger_thin_false_negative() -> None:
    gt = torch.zeros(1, 40, 140, dtype=torch.bool)
    pred = torch.zeros(1, 40, 140, dtype=torch.bool)
    gt[0, 2, 10:130] = True  # a 120 px false-negative strip, 1 px thick
    pred[0, 20:30, 20:30] = True  # a compact 100 px false-positive square
    points, labels = click_points(pred, gt)
    assert labels.tolist() == [0]  # the area rule would click the strip's edge
    x, y = points[0].long().tolist()
    assert 24 <= x <= 25 and 24 <= y <= 25


def test_equal_error_regions_give_a_negative_click() -> None:
    gt = torch.zeros(1, 8, 8, dtype=torch.bool)
    pred = torch.zeros(1, 8, 8, dtype=torch.bool)
    gt[0, 0:3, 0:3] = True
    pred[0, 5:8, 5:8] = True
    points, labels = click_points(pred, gt)
    assert labels.tolist() == [0] and points.tolist() == [[6.0, 6.0]]


def test_clicks_never_land_twice_on_one_pixel() -> None:
    gt = torch.zeros(1, 12, 12, dtype=torch.bool)
    gt[0, 3:6, 3:6] = True
    pred = torch.zeros_like(gt)  # the prediction never improves
    not_clicked = torch.ones_like(gt)
    seen = set()
    for _ in range(9):
        points, labels = click_points(pred, gt, not_clicked=not_clicked)
        x, y = points[0].long().tolist()
        assert labels.tolist() == [1] and (x, y) not in seen
        seen.add((x, y))
        not_clicked[0, y, x] = False
    assert click_points(pred, gt, not_clicked=not_clicked)[1].tolist() == [-1]  # every error pixel clicked


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_prompts_on_cuda_match_cpu() -> None:
    gt, pred = _random_masks(16, 20, 30, seed=9), _random_masks(16, 20, 30, seed=10)
    cpu_points = sample_points(gt, _gen(2))
    cuda_points = sample_points(gt.cuda(), _gen(2))
    assert cuda_points.device.type == "cuda" and torch.equal(cuda_points.cpu(), cpu_points)
    boxes = masks_to_boxes(gt)
    cuda_boxes = noisy_boxes(boxes.cuda(), _gen(2), image_size=(20, 30))
    assert torch.allclose(cuda_boxes.cpu(), noisy_boxes(boxes, _gen(2), image_size=(20, 30)))
    for fn in (lambda p, g: sample_error_points(p, g, _gen(2)), click_points):
        cpu, cuda = fn(pred, gt), fn(pred.cuda(), gt.cuda())
        assert cuda[0].device.type == "cuda"
        assert torch.equal(cuda[0].cpu(), cpu[0]) and torch.equal(cuda[1].cpu(), cpu[1])
