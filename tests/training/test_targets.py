"""Target assignment: property tests on random nested masks against brute-force references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lora_sam.training.targets import (
    box_picks,
    box_sample,
    masks_to_boxes,
    point_candidates,
    point_picks,
    point_sample,
)

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _shape(kind: str, box: tuple[int, int, int, int], height: int, width: int) -> np.ndarray:
    x0, y0, x1, y1 = box
    yy, xx = np.mgrid[:height, :width]
    if kind == "rect":
        return (xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    rx, ry = (x1 - x0) / 2 + 0.5, (y1 - y0) / 2 + 0.5
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0


@st.composite
def sub_box(draw: st.DrawFn, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    a = draw(st.integers(x0, x1))
    b = draw(st.integers(a, x1))
    c = draw(st.integers(y0, y1))
    d = draw(st.integers(c, y1))
    return a, c, b, d


@st.composite
def nested_masks(draw: st.DrawFn) -> np.ndarray:
    """(N, H, W) bool: objects containing parts containing sub-parts, plus unrelated masks."""
    height, width = draw(st.integers(6, 48)), draw(st.integers(6, 48))
    image = (0, 0, width - 1, height - 1)
    kinds = st.sampled_from(["rect", "ellipse"])
    masks: list[np.ndarray] = []

    def grow(parent: np.ndarray, box: tuple[int, int, int, int], depth: int) -> None:
        for _ in range(draw(st.integers(0, 2))):
            child_box = draw(sub_box(box))
            child = _shape(draw(kinds), child_box, height, width) & parent
            if child.any():
                masks.append(child)
                if depth > 1:
                    grow(child, child_box, depth - 1)

    for _ in range(draw(st.integers(1, 3))):
        box = draw(sub_box(image))
        obj = _shape(draw(kinds), box, height, width)
        masks.append(obj)
        grow(obj, box, 2)
    for _ in range(draw(st.integers(0, 3))):
        masks.append(_shape(draw(kinds), draw(sub_box(image)), height, width))
    if draw(st.booleans()):
        masks.insert(draw(st.integers(0, len(masks))), np.zeros((height, width), bool))
    if draw(st.booleans()) and masks:
        masks.append(masks[draw(st.integers(0, len(masks) - 1))].copy())
    return np.stack(masks)


@st.composite
def masks_and_points(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks and clicks: positives inside one mask, negatives outside it, padding anywhere."""
    masks = draw(nested_masks())
    _, height, width = masks.shape
    target = masks[draw(st.integers(0, masks.shape[0] - 1))]
    random_clicks = draw(st.booleans())
    points, labels = [], []
    for label, region in ((1, target), (0, ~target)):
        pixels = np.argwhere(region)
        for _ in range(draw(st.integers(0, 3))):
            if random_clicks or len(pixels) == 0:
                y, x = draw(st.integers(0, height - 1)), draw(st.integers(0, width - 1))
            else:
                y, x = pixels[draw(st.integers(0, len(pixels) - 1))]
            jitter = draw(st.sampled_from([0.0, 0.3, -0.4]))
            points.append((x + jitter, y - jitter))
            labels.append(label)
    for _ in range(draw(st.integers(0, 2))):
        points.append((draw(st.integers(-5, width + 5)), draw(st.integers(-5, height + 5))))
        labels.append(-1)
    if not points:
        points, labels = [(0.0, 0.0)], [-1]
    return masks, np.array(points, dtype=np.float32), np.array(labels, dtype=np.int64)


def _pixel(point: np.ndarray, height: int, width: int) -> tuple[int, int]:
    x = min(max(int(np.round(point[0])), 0), width - 1)
    y = min(max(int(np.round(point[1])), 0), height - 1)
    return x, y


def brute_candidates(masks: np.ndarray, points: np.ndarray, labels: np.ndarray) -> list[int]:
    _, height, width = masks.shape
    found = []
    for i, mask in enumerate(masks):
        if not mask.any():
            continue
        ok = True
        for point, label in zip(points, labels):
            x, y = _pixel(point, height, width)
            if (label == 1 and not mask[y, x]) or (label == 0 and mask[y, x]):
                ok = False
        if ok:
            found.append(i)
    return found


def reference_point_choices(masks: np.ndarray, candidates: list[int]) -> list[set[int]]:
    """The documented rule, in plain Python: allowed mask indices for each of the 3 places."""
    if not candidates:
        return []
    areas = {i: int(masks[i].sum()) for i in candidates}
    ranked = sorted(candidates, key=lambda i: (-areas[i], i))
    largest, smallest = ranked[0], ranked[-1]
    if len(ranked) < 3:
        return [{largest}, {smallest}, {smallest}]
    target = (math.log(areas[largest]) + math.log(areas[smallest])) / 2
    distance = {i: abs(math.log(areas[i]) - target) for i in ranked[1:-1]}
    best = min(distance.values())
    middle = {i for i in ranked[1:-1] if distance[i] <= best + 1e-9}
    return [{largest}, middle, {smallest}]


def brute_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def brute_box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = iw * ih
    union = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter
    return inter / union


def _matches(result: np.ndarray, masks: np.ndarray, allowed: set[int]) -> bool:
    return any(np.array_equal(result, masks[i]) for i in allowed)


@SETTINGS
@given(masks_and_points())
def test_point_sample_properties_and_reference(case: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    masks, points, labels = case
    _, height, width = masks.shape
    out = point_sample(masks, points, labels)
    assert isinstance(out, np.ndarray) and out.shape == (3, height, width) and out.dtype == bool
    candidates = brute_candidates(masks, points, labels)
    assert np.flatnonzero(point_candidates(masks, points, labels)).tolist() == candidates
    if not candidates:
        assert not out.any()
        return
    for mask in out:
        for point, label in zip(points, labels):
            x, y = _pixel(point, height, width)
            assert label == -1 or bool(mask[y, x]) == bool(label)
    areas = out.sum(axis=(1, 2))
    assert areas[0] >= areas[1] >= areas[2] > 0
    for result, allowed in zip(out, reference_point_choices(masks, candidates)):
        assert _matches(result, masks, allowed)


@SETTINGS
@given(masks_and_points())
def test_point_sample_numpy_torch_and_areas_agree(case: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    masks, points, labels = case
    expected = point_sample(masks, points, labels)
    as_torch = point_sample(
        torch.from_numpy(masks), torch.from_numpy(points), torch.from_numpy(labels)[:, None]
    )
    assert isinstance(as_torch, torch.Tensor)
    assert np.array_equal(as_torch.numpy(), expected)
    with_areas = point_sample(masks, points, labels, areas=masks.sum(axis=(1, 2)))
    assert np.array_equal(with_areas, expected)


@SETTINGS
@given(nested_masks(), st.data())
def test_box_sample_exact_box_is_returned(masks: np.ndarray, data: st.DataObject) -> None:
    nonempty = [i for i, m in enumerate(masks) if m.any()]
    i = data.draw(st.sampled_from(nonempty))
    box = brute_box(masks[i])
    out = box_sample(masks, np.array(box, dtype=np.float32))
    assert out.shape == (3, *masks.shape[1:])
    areas = out.sum(axis=(1, 2))
    assert areas[0] >= areas[1] >= areas[2] > 0
    assert any(brute_box(m) == box for m in out)
    area_i = masks[i].sum()
    rivals = [
        j
        for j in nonempty
        if j != i
        and brute_box(masks[j]) == box
        and (masks[j].sum() > area_i or (masks[j].sum() == area_i and j < i))
    ]
    if len(rivals) < 3:
        assert _matches_any(out, masks[i])


def _matches_any(out: np.ndarray, mask: np.ndarray) -> bool:
    return any(np.array_equal(m, mask) for m in out)


@SETTINGS
@given(nested_masks(), st.data())
def test_box_sample_matches_reference(masks: np.ndarray, data: st.DataObject) -> None:
    _, height, width = masks.shape
    x0, x1 = sorted(data.draw(st.integers(-3, width + 3)) for _ in range(2))
    y0, y1 = sorted(data.draw(st.integers(-3, height + 3)) for _ in range(2))
    box = (float(x0), float(y0), float(x1), float(y1))
    out = box_sample(masks, np.array(box))
    assert np.array_equal(box_sample(torch.from_numpy(masks), torch.tensor(box)).numpy(), out)

    scored = []
    for j, mask in enumerate(masks):
        if not mask.any():
            continue
        iou = brute_box_iou(tuple(float(v) for v in brute_box(mask)), box)
        inside = mask[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1].sum() >= 0.8 * mask.sum()
        scored.append((iou, int(mask.sum()), j, inside))
    scored = [s for s in scored if s[0] > 0]
    if not scored:
        assert not out.any()
        return
    ranked = sorted(scored, key=lambda s: (-s[0], -s[1], s[2]))
    chosen = []
    for s in [ranked[0]] + [s for s in ranked[1:] if s[3]]:  # near-duplicates (mask IoU > 0.9) passed over
        a = masks[s[2]]
        if len(chosen) < 3 and all((a & masks[c[2]]).sum() <= 0.9 * (a | masks[c[2]]).sum() for c in chosen):
            chosen.append(s)
    chosen.sort(key=lambda s: -s[1])
    chosen += [chosen[-1]] * (3 - len(chosen))
    for result, s in zip(out, chosen):
        assert np.array_equal(result, masks[s[2]])


@SETTINGS
@given(nested_masks())
def test_masks_to_boxes_matches_brute_force(masks: np.ndarray) -> None:
    boxes = masks_to_boxes(masks)
    assert boxes.shape == (masks.shape[0], 4) and boxes.dtype == np.float32
    for mask, box in zip(masks, boxes):
        expected = brute_box(mask) if mask.any() else (0, 0, -1, -1)
        assert tuple(box.tolist()) == expected
    assert np.array_equal(masks_to_boxes(torch.from_numpy(masks)).numpy(), boxes)


def _nested_example() -> np.ndarray:
    """Image-wide mask, object 16x16, near-duplicate 15x16, part 5x5, sub-part 2x2, unrelated."""
    masks = np.zeros((6, 20, 20), bool)
    masks[0] = True
    masks[1, 2:18, 2:18] = True
    masks[2, 3:18, 2:18] = True
    masks[3, 5:10, 5:10] = True
    masks[4, 6:8, 6:8] = True
    masks[5, 12:16, 12:16] = True
    return masks


def test_point_sample_spans_levels_not_duplicates() -> None:
    masks = _nested_example()
    out = point_sample(masks, np.array([[6, 6]]), np.array([1]))
    assert out.sum(axis=(1, 2)).tolist() == [400, 25, 4]


def test_point_sample_negative_point_removes_parents() -> None:
    masks = _nested_example()
    out = point_sample(masks, np.array([[6.0, 6.0], [15.0, 3.0]]), np.array([[1], [0]]))
    assert out.sum(axis=(1, 2)).tolist() == [25, 4, 4]


def test_point_sample_pads_with_smallest_and_ignores_padding_points() -> None:
    masks = _nested_example()[[0, 1]]
    out = point_sample(masks, np.array([[6, 6], [0, 0]]), np.array([1, -1]))
    assert out.sum(axis=(1, 2)).tolist() == [400, 256, 256]
    single = point_sample(masks[:1], np.array([[6, 6]]), np.array([1]))
    assert single.sum(axis=(1, 2)).tolist() == [400, 400, 400]


def test_point_sample_without_candidate_is_all_false() -> None:
    masks = _nested_example()
    out = point_sample(masks, np.array([[6, 6], [13, 13], [3, 3]]), np.array([1, 1, 0]))
    assert out.shape == (3, 20, 20) and not out.any()
    empty = point_sample(np.zeros((0, 8, 9), bool), np.array([[1, 1]]), np.array([1]))
    assert empty.shape == (3, 8, 9) and not empty.any()
    t = point_sample(torch.zeros((0, 8, 9), dtype=torch.bool), torch.tensor([[1, 1]]), torch.tensor([1]))
    assert isinstance(t, torch.Tensor) and t.shape == (3, 8, 9)


def test_point_sample_clamps_points_to_image_and_keeps_dtype() -> None:
    masks = _nested_example().astype(np.uint8)
    out = point_sample(masks, np.array([[-7, 100]]), np.array([1]))
    assert out.dtype == np.uint8
    assert out.sum(axis=(1, 2)).tolist() == [400, 400, 400]


def test_box_sample_tolerates_slight_overhang_of_a_noisy_box() -> None:
    masks = np.zeros((4, 20, 20), bool)
    masks[0, 2:18, 2:18] = True  # object
    masks[1, 5:13, 2:10] = True  # part on the object's left edge
    masks[2, 6:8, 3:5] = True  # sub-part
    masks[3, 10:20, 14:20] = True  # unrelated, crossing the box
    box = np.array([3.0, 2.0, 17.0, 17.0])  # the object's box, first column cut off by noise
    assert box_sample(masks, box).sum(axis=(1, 2)).tolist() == [256, 64, 4]
    assert box_sample(masks, box, min_inside=1.0).sum(axis=(1, 2)).tolist() == [256, 4, 4]


def test_box_sample_prefers_masks_inside_the_box() -> None:
    masks = _nested_example()
    out = box_sample(masks, np.array([5.0, 5.0, 9.0, 9.0]))
    assert out.sum(axis=(1, 2)).tolist() == [25, 4, 4]


def test_box_sample_without_overlap_is_all_false() -> None:
    masks = _nested_example()[3:5]
    assert not box_sample(masks, np.array([15.0, 15.0, 19.0, 19.0])).any()
    assert not box_sample(np.zeros((0, 5, 5), bool), np.array([0.0, 0.0, 4.0, 4.0])).any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_targets_on_cuda_match_cpu() -> None:
    masks = torch.from_numpy(_nested_example())
    points, labels = torch.tensor([[6.0, 6.0], [15.0, 3.0]]), torch.tensor([1, 0])
    cuda = point_sample(masks.cuda(), points.cuda(), labels.cuda())
    assert cuda.device.type == "cuda"
    assert torch.equal(cuda.cpu(), point_sample(masks, points, labels))
    box = torch.tensor([3.0, 2.0, 18.0, 16.0])
    assert torch.equal(box_sample(masks.cuda(), box.cuda()).cpu(), box_sample(masks, box))


def _square(size: int, half: int, cx: int = 12, cy: int = 12) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[cy - half : cy + half, cx - half : cx + half] = True
    return mask


def test_point_sample_keeps_the_target_among_the_three() -> None:
    masks = np.stack([_square(24, h) for h in (10, 8, 6, 4, 2)])  # nested: areas 400, 256, 144, 64, 16
    point, label = np.array([[12.0, 12.0]]), np.array([1])
    plain = point_sample(masks, point, label)
    assert [int(m.sum()) for m in plain] == [400, 64, 16]  # largest, closest to the geometric mean 80, smallest
    for target, expected in ((2, [400, 144, 16]), (1, [400, 256, 16]), (3, [400, 64, 16]), (0, [400, 64, 16])):
        out = point_sample(masks, point, label, include=target)
        assert [int(m.sum()) for m in out] == expected
        assert any(np.array_equal(m, masks[target]) for m in out)
    torch_out = point_sample(torch.from_numpy(masks), torch.from_numpy(point), torch.from_numpy(label), include=2)
    assert np.array_equal(torch_out.numpy(), point_sample(masks, point, label, include=2))
    # A target that no point would pick (the point is off it) is still returned, in its area's place.
    off = point_sample(masks, np.array([[0.0, 0.0]]), label, include=4)
    assert all(np.array_equal(m, masks[4]) for m in off)


def test_box_sample_prefers_distinct_masks_and_keeps_the_target() -> None:
    whole = np.zeros((30, 30), bool)
    whole[5:25, 5:25] = True  # 400 px
    twin = whole.copy()
    twin[5, 5:15] = False  # 390 px, mask IoU 0.975 with whole, same box
    part = np.zeros_like(whole)
    part[6:16, 6:16] = True
    sub = np.zeros_like(whole)
    sub[18:22, 18:22] = True
    masks = np.stack([whole, twin, part, sub])
    box = np.array([5.0, 5.0, 24.0, 24.0])
    out = box_sample(masks, box)
    assert [int(m.sum()) for m in out] == [400, 100, 16]  # the twin passed over while distinct masks remain
    out = box_sample(masks, box, include=1)
    assert np.array_equal(out[0], twin) and [int(m.sum()) for m in out[1:]] == [100, 16]
    # A noisy box that cuts the target off: the target is returned anyway, in place of the lowest-ranked choice.
    small = np.array([5.0, 5.0, 16.0, 16.0])
    assert not any(np.array_equal(m, sub) for m in box_sample(masks, small))
    assert any(np.array_equal(m, sub) for m in box_sample(masks, small, include=3))
    # Only near-duplicates: the best of them, repeated.
    assert int(box_sample(masks[:2], box)[0].sum()) == 400


@SETTINGS
@given(nested_masks(), st.data())
def test_batched_picks_equal_one_prompt_at_a_time(masks: np.ndarray, data: st.DataObject) -> None:
    """``point_picks`` / ``box_picks`` (K prompts in one call, as the recipe uses them) give, row by row, the
    masks of ``point_sample`` / ``box_sample`` called once per prompt (each checked above against its
    brute-force reference), with and without ``include``."""
    n, height, width = masks.shape
    k = data.draw(st.integers(1, 6))
    points = np.array([[data.draw(st.integers(0, width - 1)), data.draw(st.integers(0, height - 1))]
                       for _ in range(k)], dtype=np.float32)[:, None]
    boxes = np.array([sorted(data.draw(st.integers(-3, width + 3)) for _ in range(2))
                      + sorted(data.draw(st.integers(-3, height + 3)) for _ in range(2)) for _ in range(k)],
                     dtype=np.float32)[:, [0, 2, 1, 3]]
    include = np.array([data.draw(st.integers(0, n - 1)) for _ in range(k)])
    m = torch.from_numpy(masks)
    areas = m.flatten(1).sum(1).float()
    labels = torch.ones(k, 1, dtype=torch.long)
    for inc in (None, include):
        target = None if inc is None else torch.from_numpy(inc)
        picks, count = point_picks(m, torch.from_numpy(points), labels, areas, include=target)
        for j in range(k):
            one = point_sample(masks, points[j], np.ones(1), include=None if inc is None else int(inc[j]))
            got = masks[picks[j].numpy()] if count[j] > 0 else np.zeros_like(one)
            assert np.array_equal(got, one)
        picks, count = box_picks(m, torch.from_numpy(boxes), areas, include=target)
        for j in range(k):
            one = box_sample(masks, boxes[j], include=None if inc is None else int(inc[j]))
            got = masks[picks[j].numpy()] if count[j] > 0 else np.zeros_like(one)
            assert np.array_equal(got, one)
