"""Target assignment: which ground-truth masks a prompt means.

SAM answers one prompt with 3 masks, from the whole object to a sub-part. Training pairs
them with 3 ground-truth masks chosen here, ordered from big to small (non-increasing area).

Both functions take numpy arrays or torch tensors and return the same type (torch: on the
masks' device). Masks are ``(N, H, W)``; points are ``(x, y)`` pixels, so a point lies on mask
``m`` when ``m[y, x]``; boxes are XYXY inclusive pixel extents (see ``docs/contracts.md``).
"""

from __future__ import annotations

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor

__all__ = ["box_sample", "masks_to_boxes", "point_candidates", "point_sample"]


def masks_to_boxes(masks: ArrayLike) -> ArrayLike:
    """Tight boxes of masks.

    Arguments:
      masks: (K, H, W) bool (or 0/1) masks, numpy or torch.

    Returns:
      (K, 4) float32 XYXY boxes, inclusive pixel extents: ``x1`` is the last column that is on,
      so a single pixel at (x, y) gives (x, y, x, y). An empty mask gives (0, 0, -1, -1),
      which has zero width and height in the inclusive convention. Same type as ``masks``.
    """
    m, is_numpy = _as_tensor(masks)
    boxes = _boxes(m.bool())
    return boxes.numpy() if is_numpy else boxes


def point_candidates(all_masks: ArrayLike, points_coords: ArrayLike, points_label: ArrayLike) -> ArrayLike:
    """The masks consistent with a set of clicks.

    Arguments:
      all_masks: (N, H, W) bool masks.
      points_coords: (P, 2) points as (x, y) pixels; rounded to the nearest pixel and clamped
        to the image.
      points_label: (P,) or (P, 1) labels: 1 foreground, 0 background, -1 padding (ignored).

    Returns:
      (N,) bool, True for each non-empty mask that contains every foreground point and no
      background point. Same type as ``all_masks``.
    """
    m, is_numpy = _as_tensor(all_masks)
    mb = m.bool()
    ok = _candidates(mb, points_coords, points_label) & mb.flatten(1).any(dim=1)
    return ok.numpy() if is_numpy else ok


def point_sample(
    all_masks: ArrayLike,
    points_coords: ArrayLike,
    points_label: ArrayLike,
    *,
    areas: ArrayLike | None = None,
    include: int | None = None,
) -> ArrayLike:
    """The 3 ground-truth masks for a point prompt, from big to small.

    Candidates are the non-empty masks that contain every foreground point (label 1) and no
    background point (label 0); label -1 points are padding and ignored. Points are rounded to
    the nearest pixel and clamped to the image.

    Selection rule, chosen to span the ambiguity levels (whole, part, sub-part) rather than
    return near-duplicates: sort the candidates by area, largest first (ties: lower mask index
    first), and return

      1. the largest candidate,
      2. the candidate strictly between the two ends whose area is closest, on a log scale,
         to the geometric mean of the largest and smallest areas (ties: the larger one),
      3. the smallest candidate.

    With 2 candidates the result is (largest, smallest, smallest); with 1 it is that mask 3
    times. With no candidate the result is all False: training detects it with ``.any()``
    and skips the prompt.

    ``include`` (the index of the mask the prompt was drawn from) is always among the 3: when
    more than 3 masks lie under the point and the rule above leaves it out, it takes the middle
    place (it lies between the largest and the smallest candidate), and the 3 are re-sorted by area.

    Arguments:
      all_masks: (N, H, W) bool (or 0/1) masks, numpy or torch.
      points_coords: (P, 2) points as (x, y) pixels.
      points_label: (P,) or (P, 1) labels in {1, 0, -1}.
      areas: optional (N,) pixel counts of the masks, to avoid recounting them when the same
        masks are sampled many times.
      include: optional index of a mask that must be among the 3 (the prompt's target).

    Returns:
      (3, H, W) masks with the dtype and type of ``all_masks`` (torch: same device), areas
      non-increasing.
    """
    m, is_numpy = _as_tensor(all_masks)
    if m.shape[0] == 0:
        return _empty_result(m, is_numpy)
    picks, n, area = _point_picks(m, points_coords, points_label, areas)
    if include is not None:
        target = torch.as_tensor(int(include), device=m.device)
        picks = torch.stack([picks[0], torch.where((picks == target).any(), picks[1], target), picks[2]])
        picks = torch.where(n > 0, picks[torch.sort(area[picks], descending=True, stable=True).indices],
                            target.expand(3))
        n = n.clamp(min=1)
    picked = m[picks]
    out = torch.where(n > 0, picked, torch.zeros_like(picked))
    return out.numpy() if is_numpy else out


def _point_picks(masks: torch.Tensor, points_coords: ArrayLike, points_label: ArrayLike,
                 areas: ArrayLike | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``point_sample``'s rule: (largest, middle, smallest) candidate indices (3,), the candidate count
    and the areas (N,); the indices mean nothing when the count is 0."""
    m = masks
    ok = _candidates(m.bool(), points_coords, points_label)
    area = _areas(m, areas)
    ok = ok & (area > 0)
    order = torch.sort(torch.where(ok, area, -1.0), descending=True, stable=True).indices
    n = ok.sum()
    last = (n - 1).clamp(min=0)
    largest, smallest = order[0], order[last]
    log_area = area[order].clamp(min=1.0).log()
    target = 0.5 * (log_area[0] + log_area[last])
    rank = torch.arange(order.shape[0], device=order.device)
    inner = (rank > 0) & (rank < last)
    distance = torch.where(inner, (log_area - target).abs(), torch.full_like(log_area, float("inf")))
    middle = torch.where(n >= 3, order[distance.argmin()], smallest)
    return torch.stack([largest, middle, smallest]), n, area


def box_sample(
    all_masks: ArrayLike,
    bbox: ArrayLike,
    *,
    areas: ArrayLike | None = None,
    mask_boxes: ArrayLike | None = None,
    min_inside: float = 0.8,
    include: int | None = None,
    duplicate_iou: float = 0.9,
) -> ArrayLike:
    """The 3 ground-truth masks for a box prompt, from big to small.

    Each non-empty mask is scored by the IoU between its tight box and ``bbox`` (inclusive
    pixel extents, so a mask's own box gives IoU 1). Rule:

      1. The best fit is the mask with the highest box IoU (ties: larger area, then lower
         index). It is always returned, even when it overhangs the box: a noisy box may cut
         off part of the object it was drawn from.
      2. The other places go to masks lying inside the box, ranked by box IoU the same way.
         A mask counts as inside when at least ``min_inside`` (default 80 %) of its pixels lie
         in the box (rounded to whole pixels). This tolerates the overhang of a noisy box
         (noise std 10 % of the side), which cuts off a few columns of parts that touch the
         object's edge, while masks that merely cross the box are left out.
      3. Masks whose box does not meet ``bbox`` (IoU 0) are never chosen.
      4. Distinct masks first: a candidate whose mask IoU with one already chosen is above
         ``duplicate_iou`` (0.9) is passed over while other candidates remain.
      5. ``include`` (the mask the box was drawn from) is always returned: it replaces its own
         near-duplicate among the chosen, else the lowest-ranked choice.

    The chosen masks (at most 3) are ordered by area, largest first, and padded by repeating
    the smallest. If no mask meets the box (or there is none) and nothing is included, the
    result is all False.

    Arguments:
      all_masks: (N, H, W) bool (or 0/1) masks, numpy or torch.
      bbox: (4,) XYXY box in pixels.
      areas: optional (N,) pixel counts of the masks.
      mask_boxes: optional (N, 4) XYXY boxes of the masks, as from ``masks_to_boxes``.
      min_inside: fraction of a mask's pixels that must lie in the box for it to count as inside.
      include: optional index of a mask that must be among the 3 (the prompt's target).
      duplicate_iou: mask IoU above which two masks count as near-duplicates.

    Returns:
      (3, H, W) masks, as ``point_sample``'s.
    """
    m, is_numpy = _as_tensor(all_masks)
    if m.shape[0] == 0:
        return _empty_result(m, is_numpy)
    mb = m.bool()
    area = _areas(m, areas)
    ranking = _box_candidates(mb, area, bbox, mask_boxes, min_inside)
    chosen = _distinct(mb, ranking, include, duplicate_iou)
    if not chosen:
        return _empty_result(m, is_numpy)
    areas_list = area.tolist()
    chosen.sort(key=lambda i: -areas_list[i])  # stable: equal areas keep their rank
    out = m[torch.tensor(chosen + [chosen[-1]] * (3 - len(chosen)), device=m.device)]
    return out.numpy() if is_numpy else out


def _box_candidates(masks: torch.Tensor, area: torch.Tensor, bbox: ArrayLike, mask_boxes: ArrayLike | None,
                    min_inside: float) -> list[int]:
    """Indices of the masks ``box_sample`` may choose, best first (rules 1 to 3)."""
    n_masks, height, width = masks.shape
    boxes = _boxes(masks) if mask_boxes is None else torch.as_tensor(mask_boxes, device=masks.device).float()
    box = torch.as_tensor(bbox, dtype=torch.float32).reshape(4)
    box = torch.stack([box[[0, 2]].min(), box[[1, 3]].min(), box[[0, 2]].max(), box[[1, 3]].max()])
    iou = _box_iou(boxes, box.to(masks.device)) * (area > 0)
    x0, y0, x1, y1 = box.round().long().tolist()
    x0, x1 = max(x0, 0), min(x1, width - 1)
    y0, y1 = max(y0, 0), min(y1, height - 1)
    if x0 <= x1 and y0 <= y1:
        in_box = masks[:, y0 : y1 + 1, x0 : x1 + 1].sum(dim=(1, 2)).float()
    else:
        in_box = torch.zeros_like(area)
    inside = in_box >= min_inside * area
    by_area = torch.sort(area, descending=True, stable=True).indices
    ranking = by_area[torch.sort(iou[by_area], descending=True, stable=True).indices]
    best = ranking[0]
    allowed = (iou > 0) & (inside | (torch.arange(n_masks, device=masks.device) == best))
    return ranking[allowed[ranking]].tolist()


def _distinct(masks: torch.Tensor, ranking: list[int], include: int | None, duplicate_iou: float) -> list[int]:
    """Up to 3 of ``ranking``, skipping near-duplicates of those taken, with ``include`` forced in (rules 4, 5)."""

    def same(i: int, j: int) -> bool:
        union = (masks[i] | masks[j]).sum()
        return bool(union > 0 and (masks[i] & masks[j]).sum() > duplicate_iou * union)

    chosen: list[int] = []
    for i in ranking:
        if len(chosen) == 3:
            break
        if not any(same(i, j) for j in chosen):
            chosen.append(i)
    if include is not None and int(include) not in chosen:
        twins = [j for j in chosen if same(j, int(include))]
        if twins:
            chosen[chosen.index(twins[0])] = int(include)
        elif len(chosen) < 3:
            chosen.append(int(include))
        else:
            chosen[-1] = int(include)
    return chosen


def _as_tensor(masks: ArrayLike) -> tuple[torch.Tensor, bool]:
    if isinstance(masks, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(masks)), True
    if isinstance(masks, torch.Tensor):
        return masks, False
    raise TypeError(f"masks must be a numpy array or a torch tensor, got {type(masks).__name__}")


def _empty_result(masks: torch.Tensor, is_numpy: bool) -> ArrayLike:
    out = torch.zeros((3, *masks.shape[1:]), dtype=masks.dtype, device=masks.device)
    return out.numpy() if is_numpy else out


def _areas(masks: torch.Tensor, areas: ArrayLike | None) -> torch.Tensor:
    if areas is None:
        return masks.bool().sum(dim=(1, 2)).float()
    area = torch.as_tensor(areas, device=masks.device).float().reshape(-1)
    if area.shape[0] != masks.shape[0]:
        raise ValueError(f"areas has {area.shape[0]} entries for {masks.shape[0]} masks")
    return area


def _boxes(masks: torch.Tensor) -> torch.Tensor:
    _, height, width = masks.shape
    cols, rows = masks.any(dim=1), masks.any(dim=2)
    x = torch.arange(width, device=masks.device)
    y = torch.arange(height, device=masks.device)
    x0, x1 = torch.where(cols, x, width).amin(dim=1), torch.where(cols, x, -1).amax(dim=1)
    y0, y1 = torch.where(rows, y, height).amin(dim=1), torch.where(rows, y, -1).amax(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).float()
    empty = ~cols.any(dim=1)
    return torch.where(empty[:, None], boxes.new_tensor([0.0, 0.0, -1.0, -1.0]), boxes)


def _box_iou(boxes: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """IoU of (N, 4) inclusive XYXY boxes with one (4,) box: (N,)."""
    iw = (torch.minimum(boxes[:, 2], box[2]) - torch.maximum(boxes[:, 0], box[0]) + 1).clamp(min=0)
    ih = (torch.minimum(boxes[:, 3], box[3]) - torch.maximum(boxes[:, 1], box[1]) + 1).clamp(min=0)
    inter = iw * ih
    area_a = (boxes[:, 2] - boxes[:, 0] + 1).clamp(min=0) * (boxes[:, 3] - boxes[:, 1] + 1).clamp(min=0)
    area_b = (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
    return inter / (area_a + area_b - inter).clamp(min=1e-6)


def _candidates(masks: torch.Tensor, points_coords: ArrayLike, points_label: ArrayLike) -> torch.Tensor:
    _, height, width = masks.shape
    points = torch.as_tensor(points_coords, device=masks.device).reshape(-1, 2).double()
    labels = torch.as_tensor(points_label, device=masks.device).reshape(-1)
    if points.shape[0] != labels.shape[0]:
        raise ValueError(f"{points.shape[0]} points but {labels.shape[0]} labels")
    x = points[:, 0].round().long().clamp(0, width - 1)
    y = points[:, 1].round().long().clamp(0, height - 1)
    hit = masks[:, y, x]  # (N, P)
    fg, bg = labels == 1, labels == 0
    return (hit | ~fg).all(dim=1) & ~(hit & bg).any(dim=1)
