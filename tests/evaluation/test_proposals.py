"""Object-proposal average recall against a brute-force reference in plain Python with exact fractions."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from lora_sam.evaluation.proposals import ProposalRecall, average_recall, mask_ious, recall_hits

THRESHOLDS = [Fraction(50 + 5 * i, 100) for i in range(10)]  # 0.50 ... 0.95, exactly


def _pixels(mask: np.ndarray) -> set[tuple[int, int]]:
    return {(y, x) for y in range(mask.shape[0]) for x in range(mask.shape[1]) if mask[y, x]}


def _iou(a: set, b: set) -> Fraction:
    union = len(a | b)
    return Fraction(len(a & b), union) if union else Fraction(0)


def _brute_hits(proposals, gt, limit, scores=None) -> tuple[int, int]:
    """(recalled (GT, threshold) pairs, GT count) by loops: rank, cut at ``limit``, compare every pair."""
    order = list(range(len(proposals)))
    if scores is not None:
        order.sort(key=lambda i: -scores[i])  # Python's sort is stable: equal scores keep their order
    top = [_pixels(proposals[i]) for i in order[:limit]]
    hits = 0
    for g in gt:
        target = _pixels(g)
        for t in THRESHOLDS:
            if any(_iou(p, target) >= t for p in top):
                hits += 1
    return hits, len(gt)


def _brute_ar(proposals, gt, limit, scores=None) -> float:
    hits, count = _brute_hits(proposals, gt, limit, scores)
    return float(Fraction(hits, count * len(THRESHOLDS))) if count else float("nan")


def _box(shape, y0, y1, x0, x1) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


SHAPE = (6, 8)


def test_an_iou_of_exactly_seven_tenths_counts_at_0_70_not_at_0_75() -> None:
    gt = _box(SHAPE, 0, 2, 0, 5)  # 10 pixels
    partial = _box(SHAPE, 0, 2, 0, 5)
    partial[1, 2:5] = False  # 7 of them, nothing outside: IoU 7/10
    ar = average_recall(np.stack([partial]), np.stack([gt]), limits=(1,))
    assert ar == {1: 0.5}  # recalled at 0.50, 0.55, 0.60, 0.65, 0.70: 5 of 10 thresholds
    assert ar[1] == _brute_ar([partial], [gt], 1)


def test_equal_scores_keep_their_order_at_the_limit() -> None:
    gt = _box(SHAPE, 1, 4, 1, 4)
    miss, hit, low = _box(SHAPE, 4, 6, 5, 8), gt.copy(), gt.copy()
    proposals = np.stack([low, miss, hit])
    scores = [0.5, 0.9, 0.9]  # ranked: miss, hit (tie kept in list order), low
    assert average_recall(proposals, gt[None], limits=(1, 2), scores=scores) == {1: 0.0, 2: 1.0}
    for limit in (1, 2, 3):
        assert average_recall(proposals, gt[None], limits=(limit,), scores=scores)[limit] == _brute_ar(
            proposals, [gt], limit, scores
        )


def test_only_the_top_n_proposals_count() -> None:
    gt = _box(SHAPE, 2, 5, 2, 6)
    proposals = [_box(SHAPE, 0, 1, 0, 1 + i) for i in range(3)] + [gt.copy(), _box(SHAPE, 0, 6, 0, 8)]
    assert average_recall(np.stack(proposals), gt[None], limits=(3, 4, 100)) == {3: 0.0, 4: 1.0, 100: 1.0}


def test_no_proposals_no_ground_truth_and_a_mask_never_recalled() -> None:
    gt = np.stack([_box(SHAPE, 0, 3, 0, 3), _box(SHAPE, 4, 6, 6, 8)])
    assert average_recall([], gt) == {100: 0.0, 1000: 0.0}
    assert average_recall(np.zeros((0, *SHAPE), dtype=bool), gt) == {100: 0.0, 1000: 0.0}
    nan = average_recall(gt, np.zeros((0, *SHAPE), dtype=bool))
    assert all(np.isnan(v) for v in nan.values())
    only_first = average_recall(gt[:1], gt)  # the second GT overlaps no proposal
    assert only_first == {100: 0.5, 1000: 0.5} and only_first[100] == _brute_ar(gt[:1], list(gt), 100)
    empty_gt = np.zeros((1, *SHAPE), dtype=bool)  # IoU 0 with everything, even an empty proposal
    assert average_recall(empty_gt.copy(), empty_gt, limits=(1,)) == {1: 0.0}


def test_accumulation_pools_the_ground_truth_masks_of_all_images() -> None:
    a = _box(SHAPE, 0, 3, 0, 3)
    others = np.stack([_box(SHAPE, 3, 6, 0, 2), _box(SHAPE, 3, 6, 3, 5), _box(SHAPE, 0, 2, 5, 8)])
    metric = ProposalRecall(limits=(10,))
    metric.update(a[None], a[None])  # 1 of 1 recalled
    metric.update(a[None], others)  # 0 of 3
    metric.update(a[None], np.zeros((0, *SHAPE), dtype=bool))  # no ground truth: changes nothing
    assert metric.gt_count == 4 and metric.images == 3
    assert metric.compute() == {"AR@10": 0.25}  # pooled; the mean of the images' ARs would be 0.5
    assert np.isnan(ProposalRecall().compute()["AR@100"])


def _random_case(rng: np.random.Generator):
    shape = tuple(int(s) for s in rng.integers(2, 8, size=2))
    density = rng.uniform(0.1, 0.9)
    gt = rng.random((int(rng.integers(0, 5)), *shape)) < density
    proposals = rng.random((int(rng.integers(0, 12)), *shape)) < density
    if len(gt) and len(proposals):  # exact and near copies, so that high thresholds are reached too
        proposals[0] = gt[0]
        proposals[-1] = gt[-1] ^ (rng.random(shape) < 0.1)
    scores = rng.integers(0, 4, size=len(proposals)).tolist() if rng.random() < 0.5 else None  # many ties
    return proposals, gt, scores


def test_random_mask_sets_match_the_brute_force_reference() -> None:
    rng = np.random.default_rng(2024)
    pooled = ProposalRecall(limits=(1, 3, 20))
    totals = {limit: [0, 0] for limit in (1, 3, 20)}
    for _ in range(60):
        proposals, gt, scores = _random_case(rng)
        ar = average_recall(proposals, gt, limits=(1, 3, 20), scores=scores)
        for limit in (1, 3, 20):
            expected = _brute_ar(proposals, gt, limit, scores)
            assert ar[limit] == pytest.approx(expected, nan_ok=True, abs=1e-12)
            hits, count = _brute_hits(proposals, gt, limit, scores)
            totals[limit][0] += hits
            totals[limit][1] += count
        pooled.update(proposals, gt, scores)
    for limit, (hits, count) in totals.items():
        assert pooled.compute()[f"AR@{limit}"] == pytest.approx(hits / (count * 10), abs=1e-12)


def test_mask_ious_in_small_pixel_blocks_equal_the_exact_ratios() -> None:
    rng = np.random.default_rng(7)
    proposals, gt = rng.random((9, 13, 11)) < 0.4, rng.random((4, 13, 11)) < 0.6
    blocked = mask_ious(proposals, gt, block_bytes=4 * 13 * 3)  # 3 pixels per block
    expected = np.array([[float(_iou(_pixels(p), _pixels(g))) for g in gt] for p in proposals])
    assert np.array_equal(blocked, expected)
    assert np.array_equal(mask_ious(proposals, gt), expected)
    assert np.array_equal(mask_ious(torch.as_tensor(proposals), list(gt)), expected)


def test_recall_hits_shape_and_errors() -> None:
    gt = np.stack([_box(SHAPE, 0, 2, 0, 2)] * 2)
    hits = recall_hits(gt[:1], gt, limits=(1, 5), iou_thresholds=(0.5, 0.9, 1.0))
    assert hits.shape == (2, 3, 2) and hits.all()
    with pytest.raises(ValueError, match="pixels per mask"):
        mask_ious(np.zeros((1, 4, 4), dtype=bool), gt)
    with pytest.raises(ValueError, match="scores for"):
        average_recall(gt, gt, scores=[1.0])
    with pytest.raises(ValueError, match="positive"):
        average_recall(gt, gt, limits=(0,))
