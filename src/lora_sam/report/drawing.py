"""The drawing primitives the report's figures share (matplotlib, Agg backend, no pyplot state).

Figures are drawn on ``matplotlib.figure.Figure`` objects with an Agg canvas and written as PNG;
nothing here uses pyplot, opens a window, changes the backend or leaks a global figure. Images
are (H, W, 3) uint8 or float arrays (a (3, H, W) torch tensor is accepted too); masks are
(H, W) bool; points (x, y) pixels; boxes XYXY inclusive pixel extents.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

__all__ = [
    "BOX_COLOR",
    "MASK_COLOR",
    "RANK_NAMES",
    "draw_box",
    "draw_points",
    "new_figure",
    "overlay",
    "palette",
    "save",
    "to_numpy",
    "to_rgb",
]

RANK_NAMES = ("1 (largest)", "2", "3 (smallest)")
"""Titles of the 3 ground-truth masks of a prompt, big to small."""
MASK_COLOR = np.array([0.12, 0.47, 0.95])
POSITIVE_COLOR, NEGATIVE_COLOR, BOX_COLOR = "#1db31d", "#e8202a", "#ffd21f"


def to_numpy(x: np.ndarray | torch.Tensor | tuple | list) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def to_rgb(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """(H, W, 3) float in 0..1 from (H, W, 3) or (3, H, W), uint8 or float 0..1 or 0..255."""
    img = to_numpy(image)
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


def palette(count: int) -> np.ndarray:
    """``count`` distinct RGB colours in 0..1 (matplotlib's tab20, then repeated): (count, 3)."""
    from matplotlib import colormaps

    return np.array([colormaps["tab20"](i % 20)[:3] for i in range(count)]).reshape(count, 3)


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` x ``height`` inches with constrained layout and an Agg canvas."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, out_path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` as PNG to ``out_path`` (parent folders are made); returns the path."""
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def overlay(ax: Axes, image: np.ndarray, mask: np.ndarray | None, color: np.ndarray = MASK_COLOR) -> None:
    """``image`` with ``mask`` (if any pixel is set) tinted and outlined in ``color``, axes off."""
    height, width = image.shape[:2]
    ax.imshow(image)
    if mask is not None and mask.any():
        layer = np.zeros((height, width, 4))
        layer[..., :3] = color
        layer[..., 3] = 0.55 * mask
        ax.imshow(layer)
        ax.contour(mask.astype(float), levels=[0.5], colors=[color], linewidths=0.8)
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])


def draw_points(ax: Axes, points: np.ndarray, labels: np.ndarray) -> None:
    """Positive points (label 1) green, negative ones (0) red; padding (-1) is not drawn."""
    for value, color in ((1, POSITIVE_COLOR), (0, NEGATIVE_COLOR)):
        sel = labels == value
        if sel.any():
            ax.scatter(
                points[sel, 0], points[sel, 1], s=60, c=color, marker="o", edgecolors="white", linewidths=1.2
            )


def draw_box(ax: Axes, box: np.ndarray) -> None:
    """An XYXY box of inclusive pixel extents, in yellow."""
    x0, y0, x1, y1 = box
    ax.add_patch(
        Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, edgecolor=BOX_COLOR, linewidth=2)
    )
