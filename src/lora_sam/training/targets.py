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
import torch.nn.functional as F

ArrayLike = np.ndarray | torch.Tensor

__all__ = ["box_picks", "box_sample", "masks_to_boxes", "point_candidates", "point_picks", "point_sample"]


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
    ok = _candidates(mb, *_one_prompt(mb, points_coords, points_label))[0] & mb.flatten(1).any(dim=1)
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
    target = None if include is None else torch.as_tensor([int(include)], device=m.device)
    picks, n = point_picks(m.bool(), *_one_prompt(m, points_coords, points_label), _areas(m, areas), include=target)
    picked = m[picks[0]]
    out = torch.where(n[0] > 0, picked, torch.zeros_like(picked))
    return out.numpy() if is_numpy else out


def point_picks(masks: torch.Tensor, points: torch.Tensor, labels: torch.Tensor, areas: torch.Tensor, *,
                include: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``point_sample``'s rule for K prompts at once, as indices into ``masks``, without host syncs.

    Arguments:
      masks: (N, H, W) bool; areas: (N,) their pixel counts.
      points: (K, P, 2) (x, y) pixels; labels: (K, P) in {1, 0, -1}.
      include: optional (K,) int64 index of the mask each prompt must keep among its 3.

    Returns:
      picks (K, 3) int64 mask indices, areas non-increasing, and the candidate count (K,) (at least
      1 with ``include``); a row with count 0 means nothing (``point_sample`` returns all False).
    """
    ok = _candidates(masks, points, labels) & (areas > 0)  # (K, N)
    order = torch.sort(torch.where(ok, areas, -1.0), dim=1, descending=True, stable=True).indices  # (K, N)
    n = ok.sum(1)
    last = (n - 1).clamp(min=0)[:, None]  # (K, 1)
    largest, smallest = order[:, 0], order.gather(1, last)[:, 0]
    log_area = areas[order].clamp(min=1.0).log()
    middle_area = 0.5 * (log_area[:, :1] + log_area.gather(1, last))
    rank = torch.arange(order.shape[1], device=order.device)
    inner = (rank > 0) & (rank < last)
    distance = torch.where(inner, (log_area - middle_area).abs(), torch.full_like(log_area, float("inf")))
    middle = torch.where(n >= 3, order.gather(1, distance.argmin(1, keepdim=True))[:, 0], smallest)
    picks = torch.stack([largest, middle, smallest], dim=1)  # (K, 3)
    if include is None:
        return picks, n
    target = include.to(picks.device).long()[:, None]
    picks[:, 1:2] = torch.where((picks == target).any(1, keepdim=True), picks[:, 1:2], target)
    picks = picks.gather(1, torch.sort(areas[picks], dim=1, descending=True, stable=True).indices)
    return torch.where(n[:, None] > 0, picks, target.expand(-1, 3)), n.clamp(min=1)


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
    box = torch.as_tensor(bbox, dtype=torch.float32, device=m.device).reshape(1, 4)
    target = None if include is None else torch.as_tensor([int(include)], device=m.device)
    picks, count = box_picks(m.bool(), box, _areas(m, areas), mask_boxes=mask_boxes, include=target,
                             min_inside=min_inside, duplicate_iou=duplicate_iou)
    picked = m[picks[0]]
    out = torch.where(count[0] > 0, picked, torch.zeros_like(picked))
    return out.numpy() if is_numpy else out


def box_picks(
    masks: torch.Tensor,
    boxes: torch.Tensor,
    areas: torch.Tensor,
    *,
    mask_boxes: ArrayLike | None = None,
    include: torch.Tensor | None = None,
    min_inside: float = 0.8,
    duplicate_iou: float = 0.9,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``box_sample``'s rule for K boxes at once, as indices into ``masks``, without host syncs.

    Arguments:
      masks: (N, H, W) bool; areas: (N,) their pixel counts; mask_boxes: optional (N, 4) their boxes.
      boxes: (K, 4) XYXY box prompts.
      include: optional (K,) int64 index of the mask each box must keep among its 3.

    Returns:
      picks (K, 3) int64 mask indices, areas non-increasing, padded with the smallest, and the number
      of distinct masks chosen (K,); a row with count 0 means nothing (``box_sample``: all False).
    """
    ranked, free = _box_candidates(masks, areas, boxes, mask_boxes, min_inside)  # (K, N) each, best first
    with torch.autocast(masks.device.type, enabled=False):
        flat = masks.flatten(1).float()  # (N, P); pixel counts by float32 matmuls, exact below 2^24 pixels
    slots, valid = [], []
    for _ in range(3):  # greedy: the best candidate left, then its near-duplicates are passed over
        slots.append(ranked.gather(1, free.to(torch.uint8).argmax(1, keepdim=True))[:, 0])  # first True by rank
        valid.append(free.any(1))
        free = free & ~_same(flat, slots[-1], ranked, duplicate_iou)
    chosen, ok = torch.stack(slots, 1), torch.stack(valid, 1)  # (K, 3)
    if include is not None:
        chosen, ok = _force_include(flat, chosen, ok, include.to(chosen.device).long(), duplicate_iou)
    key = torch.where(ok, areas[chosen], -1.0)
    order = torch.sort(key, dim=1, descending=True, stable=True).indices  # stable: equal areas keep their rank
    chosen, ok = chosen.gather(1, order), ok.gather(1, order)
    count = ok.sum(1)
    smallest = chosen.gather(1, (count - 1).clamp(min=0)[:, None])
    return torch.where(ok, chosen, smallest), count


def _box_candidates(masks: torch.Tensor, area: torch.Tensor, boxes: torch.Tensor, mask_boxes: ArrayLike | None,
                    min_inside: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rules 1 to 3 for K boxes: every mask index ranked best first (K, N), and whether the mask at each
    rank may be chosen (K, N)."""
    n_masks, height, width = masks.shape
    own = _boxes(masks) if mask_boxes is None else torch.as_tensor(mask_boxes, device=masks.device).float()
    b = boxes.to(masks.device).float().reshape(-1, 4)
    b = torch.stack([torch.minimum(b[:, 0], b[:, 2]), torch.minimum(b[:, 1], b[:, 3]),
                     torch.maximum(b[:, 0], b[:, 2]), torch.maximum(b[:, 1], b[:, 3])], dim=1)  # (K, 4)
    iou = _box_iou(own, b) * (area > 0)  # (K, N)
    x0, y0, x1, y1 = b.round().long().unbind(1)
    x0, x1, y0, y1 = x0.clamp(min=0), x1.clamp(max=width - 1), y0.clamp(min=0), y1.clamp(max=height - 1)
    nonempty = (x0 <= x1) & (y0 <= y1)
    x0, x1 = x0.clamp(max=width - 1), x1.clamp(min=0)
    y0, y1 = y0.clamp(max=height - 1), y1.clamp(min=0)
    table = F.pad(masks.to(torch.int32).cumsum(1, dtype=torch.int32).cumsum(2, dtype=torch.int32), (1, 0, 1, 0))  # (N, H + 1, W + 1) summed areas
    in_box = (table[:, y1 + 1, x1 + 1] - table[:, y0, x1 + 1] - table[:, y1 + 1, x0] + table[:, y0, x0]).T  # (K, N)
    in_box = torch.where(nonempty[:, None], in_box.float(), 0.0)
    inside = in_box >= min_inside * area
    by_area = torch.sort(area, descending=True, stable=True).indices
    ranked = by_area[torch.sort(iou[:, by_area], dim=1, descending=True, stable=True).indices]  # (K, N)
    allowed = (iou > 0) & (inside | (torch.arange(n_masks, device=masks.device) == ranked[:, :1]))
    return ranked, allowed.gather(1, ranked)


def _same(flat: torch.Tensor, pick: torch.Tensor, others: torch.Tensor, duplicate_iou: float) -> torch.Tensor:
    """Near-duplicates: whether the mask IoU of ``flat[pick[k]]`` with ``flat[others[k, j]]`` is above
    ``duplicate_iou`` (K, J); ``flat`` (N, P) float 0/1 masks."""
    with torch.autocast(flat.device.type, enabled=False):
        inter = (flat[pick] @ flat.T).gather(1, others)  # (K, J)
    counts = flat.sum(1)  # (N,)
    union = counts[pick][:, None] + counts[others] - inter
    return (union > 0) & (inter > duplicate_iou * union)


def _force_include(flat: torch.Tensor, chosen: torch.Tensor, ok: torch.Tensor, include: torch.Tensor,
                   duplicate_iou: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rule 5: ``include`` replaces its first near-duplicate among the chosen, else takes the first free
    slot, else replaces the lowest-ranked choice."""
    target = include[:, None]  # (K, 1)
    present = ((chosen == target) & ok).any(1, keepdim=True)
    twins = _same(flat, include, chosen, duplicate_iou) & ok  # (K, 3)
    slot = torch.where(twins.any(1), twins.to(torch.uint8).argmax(1), ok.sum(1).clamp(max=2))  # (K,)
    put = (torch.arange(3, device=chosen.device) == slot[:, None]) & ~present
    return torch.where(put, target, chosen), ok | put


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


def _box_iou(boxes: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """IoU of (N, 4) inclusive XYXY boxes with (K, 4) boxes: (K, N)."""
    a, b = boxes[None], prompts[:, None]  # (1, N, 4), (K, 1, 4)
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0]) + 1).clamp(min=0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1]) + 1).clamp(min=0)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0] + 1).clamp(min=0) * (a[..., 3] - a[..., 1] + 1).clamp(min=0)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    return inter / (area_a + area_b - inter).clamp(min=1e-6)


def _one_prompt(masks: torch.Tensor, points_coords: ArrayLike, points_label: ArrayLike
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, 2) points and (P,) or (P, 1) labels of one prompt -> (1, P, 2) and (1, P) on the masks' device."""
    points = torch.as_tensor(points_coords, device=masks.device).reshape(1, -1, 2)
    labels = torch.as_tensor(points_label, device=masks.device).reshape(1, -1)
    if points.shape[1] != labels.shape[1]:
        raise ValueError(f"{points.shape[1]} points but {labels.shape[1]} labels")
    return points, labels


def _candidates(masks: torch.Tensor, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool masks, (K, P, 2) points and (K, P) labels -> (K, N): the mask holds every foreground
    point of the prompt and no background point (points rounded to the nearest pixel, clamped)."""
    _, height, width = masks.shape
    x = points[..., 0].double().round().long().clamp(0, width - 1)
    y = points[..., 1].double().round().long().clamp(0, height - 1)
    hit = masks[:, y, x]  # (N, K, P)
    fg, bg = labels == 1, labels == 0
    return ((hit | ~fg).all(dim=2) & ~(hit & bg).any(dim=2)).T
