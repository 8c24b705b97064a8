"""Prompt simulation: SAM's training prompts and the standard evaluation click.

Pure functions over torch tensors. Every random function takes a CPU ``torch.Generator``:
draws are made on the CPU with it and moved to the tensors' device, so the same seed gives
the same prompts on CPU and CUDA. Points are (x, y) float pixels, boxes XYXY inclusive pixel
extents, labels int64 (1 foreground, 0 background, -1 "not a point").
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

from lora_sam.training.targets import masks_to_boxes

__all__ = ["click_points", "masks_to_boxes", "noisy_boxes", "sample_error_points", "sample_points"]


def sample_points(masks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One foreground point per mask, uniform over the mask's pixels.

    Arguments:
      masks: (K, H, W) bool masks.
      generator: CPU generator for the draws.

    Returns:
      (K, 2) float32 points (x, y) on the masks' device. An empty mask gets the image centre
      (check ``masks.flatten(1).any(1)`` when that matters).
    """
    points, _ = _uniform_pixels(masks.bool(), generator)
    return points


def noisy_boxes(
    boxes: torch.Tensor,
    generator: torch.Generator,
    *,
    image_size: tuple[int, int],
    std_fraction: float = 0.1,
    max_noise: float = 20.0,
) -> torch.Tensor:
    """Ground-truth boxes with SAM's Gaussian noise.

    Each coordinate gets noise with standard deviation ``std_fraction`` of the box side (x
    coordinates: width ``x1 - x0``, y coordinates: height ``y1 - y0``), clipped to at most
    ``max_noise`` pixels in magnitude. The result is clipped to the image, x to [0, W - 1] and
    y to [0, H - 1], and kept ordered (x0 <= x1, y0 <= y1) by swapping crossed coordinates.

    Arguments:
      boxes: (K, 4) XYXY boxes in pixels.
      generator: CPU generator for the draws.
      image_size: (H, W) of the image.

    Returns:
      (K, 4) float32 XYXY boxes on the boxes' device.
    """
    height, width = image_size
    b = boxes.float()
    noise = torch.randn(b.shape, generator=generator, device="cpu").to(b.device)
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    std = std_fraction * torch.stack([w, h, w, h], dim=1).clamp(min=0)
    noisy = b + (noise * std).clamp(-max_noise, max_noise)
    xs = noisy[:, [0, 2]].clamp(0, width - 1)
    ys = noisy[:, [1, 3]].clamp(0, height - 1)
    return torch.stack([xs.amin(1), ys.amin(1), xs.amax(1), ys.amax(1)], dim=1)


def sample_error_points(
    pred: torch.Tensor, gt: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The next training click, uniform over the error region ``pred XOR gt``.

    Arguments:
      pred: (K, H, W) bool predicted masks.
      gt: (K, H, W) bool ground-truth masks.
      generator: CPU generator for the draws.

    Returns:
      points (K, 2) float32 (x, y) and labels (K,) int64 on the masks' device: 1 when the
      pixel is a false negative (in ``gt``, not in ``pred``), 0 when a false positive. A row
      without error gets label -1 and the image centre as its point.
    """
    p, g = pred.bool(), gt.bool()
    points, found = _uniform_pixels(p ^ g, generator)
    x, y = points[:, 0].long(), points[:, 1].long()
    in_gt = g[torch.arange(g.shape[0], device=g.device), y, x]
    labels = torch.where(found, in_gt.long(), torch.full_like(in_gt, -1, dtype=torch.long))
    return points, labels


def click_points(
    pred: torch.Tensor, gt: torch.Tensor, *, not_clicked: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The standard deterministic evaluation click (RITM's clicker, SAM 2's ``sample_one_point_from_error_center``).

    The error regions are the false negatives ``gt & ~pred`` and the false positives ``pred & ~gt``.
    Each whole region gets the Euclidean distance transform, padded with a False border (so the image
    border counts as boundary); then, as RITM does, the distances of pixels clicked before are set to
    0 (a clicked pixel does not cut a hole into its region: the next click lands beside it, not at
    the most interior pixel of what is left). The click is positive when the false negatives' largest
    distance is strictly larger than the false positives' (a tie is a negative click, as in both
    references), and lands on the first pixel, in row-major order (smallest y, then smallest x), where
    that region's distance is largest.

    Arguments:
      pred: (K, H, W) bool predicted masks.
      gt: (K, H, W) bool ground-truth masks.
      not_clicked: (K, H, W) bool, False at pixels clicked before (they are never clicked again);
        None: every pixel may be clicked.

    Returns:
      points (K, 2) float32 (x, y) and labels (K,) int64 on the masks' device. A row without a
      clickable error pixel gets label -1 and the image centre as its point.
    """
    p, g = pred.bool(), gt.bool()
    fn_np, fp_np = (g & ~p).cpu().numpy(), (p & ~g).cpu().numpy()
    allowed = None if not_clicked is None else not_clicked.bool().cpu().numpy()
    k, height, width = fn_np.shape
    points = np.zeros((k, 2), dtype=np.float32)
    labels = np.full(k, -1, dtype=np.int64)
    for i in range(k):
        fn_dt, fp_dt = _interior_distance(fn_np[i]), _interior_distance(fp_np[i])
        if allowed is not None:
            fn_dt, fp_dt = fn_dt * allowed[i], fp_dt * allowed[i]
        positive = fn_dt.max() > fp_dt.max()
        distance = fn_dt if positive else fp_dt
        if distance.max() <= 0:
            points[i] = (width // 2, height // 2)
            continue
        y, x = np.unravel_index(int(np.argmax(distance)), (height, width))
        points[i] = (x, y)
        labels[i] = int(positive)
    return torch.from_numpy(points).to(g.device), torch.from_numpy(labels).to(g.device)


def _interior_distance(region: np.ndarray) -> np.ndarray:
    """Distance of each pixel of ``region`` (H, W) to the nearest pixel outside it, the border counting as outside."""
    if not region.any():
        return np.zeros(region.shape, dtype=np.float64)
    return distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]


def _uniform_pixels(region: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A pixel uniform over each region: the r-th True pixel, r uniform, by cumsum + searchsorted.

    Returns points (K, 2) float32 (x, y) and found (K,) bool; empty rows get the image centre.
    """
    k, height, width = region.shape
    flat = region.reshape(k, -1)
    cumulative = flat.cumsum(dim=1, dtype=torch.int64)
    count = cumulative[:, -1]
    u = torch.rand(k, generator=generator, dtype=torch.float64, device="cpu").to(region.device)
    r = (u * count.double()).long().clamp(max=(count - 1).clamp(min=0))
    index = torch.searchsorted(cumulative, (r + 1)[:, None]).squeeze(1).clamp(max=flat.shape[1] - 1)
    found = count > 0
    x = torch.where(found, index % width, width // 2)
    y = torch.where(found, index // width, height // 2)
    return torch.stack([x, y], dim=1).float(), found
