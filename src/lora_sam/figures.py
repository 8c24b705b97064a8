"""Every figure of the project (matplotlib, Agg backend, no pyplot state).

Figures are drawn on ``matplotlib.figure.Figure`` objects with an Agg canvas and written as
PNG; nothing here uses pyplot, opens a window, changes the backend or leaks a global figure. Images are (H, W, 3) uint8 or float arrays (a
(3, H, W) torch tensor is accepted too); masks are (N, H, W) bool; points (x, y) pixels;
boxes XYXY inclusive pixel extents.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from lora_sam.prompts import sample_points
from lora_sam.targets import box_sample, masks_to_boxes, point_sample

__all__ = ["plot_box_sample", "plot_point_sample", "target_figure_prompts", "target_figures"]

_RANK_NAMES = ("1 (largest)", "2", "3 (smallest)")
_MASK_COLOR = np.array([0.12, 0.47, 0.95])
_POSITIVE, _NEGATIVE, _BOX = "#1db31d", "#e8202a", "#ffd21f"


def plot_point_sample(
    image: np.ndarray | torch.Tensor,
    all_masks: np.ndarray | torch.Tensor,
    points: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    out_path: str | Path,
    title: str | None = None,
) -> Path:
    """Draw the point prompts and the 3 masks ``point_sample`` assigns to them, big to small.

    Arguments:
      image: (H, W, 3) image, uint8 or float (0..1 or 0..255).
      all_masks: (N, H, W) bool ground-truth masks of the image.
      points: (P, 2) points (x, y); positive points are drawn green, negative red.
      labels: (P,) labels, 1 foreground, 0 background, -1 padding (not drawn).
      out_path: PNG file to write (parent folders are made).
      title: optional figure title.

    Returns:
      The path written.
    """
    masks = _numpy(all_masks).astype(bool)
    pts, lab = _numpy(points).reshape(-1, 2), _numpy(labels).reshape(-1)
    chosen = point_sample(masks, pts, lab)

    def draw_prompt(ax: Axes) -> None:
        _draw_points(ax, pts, lab)

    return _plot_targets(_rgb(image), chosen, draw_prompt, out_path, title)


def plot_box_sample(
    image: np.ndarray | torch.Tensor,
    all_masks: np.ndarray | torch.Tensor,
    box: np.ndarray | torch.Tensor | tuple[float, float, float, float],
    out_path: str | Path,
    title: str | None = None,
) -> Path:
    """Draw a box prompt and the 3 masks ``box_sample`` assigns to it, big to small.

    Arguments:
      image: (H, W, 3) image, uint8 or float (0..1 or 0..255).
      all_masks: (N, H, W) bool ground-truth masks of the image.
      box: (4,) XYXY box in pixels.
      out_path: PNG file to write (parent folders are made).
      title: optional figure title.

    Returns:
      The path written.
    """
    masks = _numpy(all_masks).astype(bool)
    xyxy = np.asarray(_numpy(box), dtype=np.float64).reshape(4)
    chosen = box_sample(masks, xyxy)

    def draw_prompt(ax: Axes) -> None:
        _draw_box(ax, xyxy)

    return _plot_targets(_rgb(image), chosen, draw_prompt, out_path, title)


def target_figure_prompts(
    all_masks: np.ndarray | torch.Tensor, generator: torch.Generator
) -> dict[str, dict[str, np.ndarray]]:
    """Prompts that show target assignment on one image (DESIGN.md section 6, point 4).

    A nested pair (part C inside parent P: at least 95 % of C in P, and P has pixels outside
    C) is drawn at random, preferring parts of at least 0.5 % of the image that have
    sub-parts of their own; without a pair, C is the largest mask and P the whole image.

      - ``point_1pos``: one positive point, at a pixel covered by the most masks (random
        among ties), so the 3 targets span the nesting levels;
      - ``point_1pos_1neg``: a positive point in the deepest level of C (its pixels covered by
        the most masks) and a negative one in P outside C: the parents drop out, C and its
        sub-parts remain;
      - ``point_3pos_2neg``: 3 positive points uniform in C and 2 negative ones in P outside
        C: more clicks narrow the candidates down;
      - ``box``: the exact box of P.

    C contains the positives and not the negatives, so every point case has a candidate
    (unless a single mask covers the whole image and there is nowhere to put a negative).

    Arguments:
      all_masks: (N, H, W) bool masks, N >= 1, at least one non-empty.
      generator: CPU generator for the random choices.

    Returns:
      Name -> {"points": (P, 2) float32, "labels": (P,) int64} or {"box": (4,) float32}.
    """
    masks = torch.as_tensor(_numpy(all_masks).astype(bool))
    masks = masks[masks.flatten(1).any(1)]
    if masks.shape[0] == 0:
        raise ValueError("target_figure_prompts: no non-empty mask")
    child, parent = _nested_pair(masks, generator)
    coverage = masks.sum(0)
    top = coverage == coverage.max()
    outside = parent & ~child
    draws = sample_points(
        torch.stack([top, child, child, child, child, outside, outside, outside]), generator
    )
    draws = draws.numpy()
    ones, zeros = np.ones(3, np.int64), np.zeros(2, np.int64)
    return {
        "point_1pos": {"points": draws[:1], "labels": ones[:1]},
        "point_1pos_1neg": {"points": draws[[1, 5]], "labels": np.array([1, 0])},
        "point_3pos_2neg": {"points": draws[[2, 3, 4, 6, 7]], "labels": np.concatenate([ones, zeros])},
        "box": {"box": masks_to_boxes(parent[None])[0].numpy()},
    }


def target_figures(
    image: np.ndarray | torch.Tensor,
    all_masks: np.ndarray | torch.Tensor,
    out_dir: str | Path,
    generator: torch.Generator,
    *,
    prefix: str = "targets",
) -> list[Path]:
    """Write the 4 target-assignment figures of DESIGN.md section 6, point 4.

    Prompts come from ``target_figure_prompts``: one positive point; one positive and one
    negative; 3 positive and 2 negative; one box. Files are ``{prefix}_{case}.png`` in
    ``out_dir``.

    Arguments:
      image: (H, W, 3) image, uint8 or float.
      all_masks: (N, H, W) bool masks of the image.
      out_dir: folder for the PNG files (made if missing).
      generator: CPU generator for the prompt choices.

    Returns:
      The 4 paths written, in the order above.
    """
    out = Path(out_dir)
    titles = {
        "point_1pos": "point_sample: one positive point",
        "point_1pos_1neg": "point_sample: one positive, one negative point",
        "point_3pos_2neg": "point_sample: 3 positive, 2 negative points",
        "box": "box_sample: one box",
    }
    paths = []
    for name, prompt in target_figure_prompts(all_masks, generator).items():
        path = out / f"{prefix}_{name}.png"
        if "box" in prompt:
            paths.append(plot_box_sample(image, all_masks, prompt["box"], path, titles[name]))
        else:
            paths.append(
                plot_point_sample(image, all_masks, prompt["points"], prompt["labels"], path, titles[name])
            )
    return paths


def _nested_pair(masks: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    flat = masks.flatten(1).float()
    area = flat.sum(1)
    overlap = flat @ flat.T  # (N, N): overlap[c, p] = |C & P|
    nested = (overlap >= 0.95 * area[:, None]) & (area[None, :] - overlap >= 1)
    nested.fill_diagonal_(False)
    pairs = nested.nonzero()
    if pairs.shape[0] == 0:
        largest = masks[int(area.argmax())]
        return largest, torch.ones_like(largest)
    big = area[pairs[:, 0]] >= 0.005 * flat.shape[1]
    has_parts = nested[:, pairs[:, 0]].any(dim=0)
    for preferred in (big & has_parts, big):
        if preferred.any():
            pairs = pairs[preferred]
            break
    pick = int(torch.randint(pairs.shape[0], (1,), generator=generator))
    c, p = pairs[pick].tolist()
    return masks[c], masks[p]


def _plot_targets(
    image: np.ndarray,
    chosen: np.ndarray,
    draw_prompt: Callable[[Axes], None],
    out_path: str | Path,
    title: str | None,
) -> Path:
    height, width = image.shape[:2]
    panel = 3.2
    fig = Figure(figsize=(4 * panel, panel * height / width + (0.6 if title else 0.3)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4)
    axes[0].imshow(image)
    draw_prompt(axes[0])
    axes[0].set_title("prompt")
    for ax, mask, name in zip(axes[1:], chosen, _RANK_NAMES):
        ax.imshow(image)
        if mask.any():
            overlay = np.zeros((height, width, 4))
            overlay[..., :3] = _MASK_COLOR
            overlay[..., 3] = 0.55 * mask
            ax.imshow(overlay)
            ax.contour(mask.astype(float), levels=[0.5], colors=[_MASK_COLOR], linewidths=0.8)
            ax.set_title(f"{name}: area {int(mask.sum())}")
        else:
            ax.set_title(f"{name}: no candidate")
        draw_prompt(ax)
    for ax in axes:
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(height - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def _draw_points(ax: Axes, points: np.ndarray, labels: np.ndarray) -> None:
    for value, color in ((1, _POSITIVE), (0, _NEGATIVE)):
        sel = labels == value
        if sel.any():
            ax.scatter(
                points[sel, 0], points[sel, 1], s=60, c=color, marker="o", edgecolors="white", linewidths=1.2
            )


def _draw_box(ax: Axes, box: np.ndarray) -> None:
    x0, y0, x1, y1 = box
    ax.add_patch(
        Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, edgecolor=_BOX, linewidth=2)
    )


def _numpy(x: np.ndarray | torch.Tensor | tuple | list) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _rgb(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """(H, W, 3) float in 0..1 from (H, W, 3) or (3, H, W), uint8 or float 0..1 or 0..255."""
    img = _numpy(image)
    if img.ndim == 3 and img.shape[0] == 3 and img.shape[-1] != 3:
        img = img.transpose(1, 2, 0)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    img = img.astype(np.float32)
    if img.max(initial=0.0) > 1.0:
        img = img / 255.0
    return img.clip(0.0, 1.0)
