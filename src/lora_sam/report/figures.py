"""Every figure of the project (matplotlib, Agg backend, no pyplot state).

Figures are drawn on ``matplotlib.figure.Figure`` objects with an Agg canvas and written as
PNG; nothing here uses pyplot, opens a window, changes the backend or leaks a global figure. Images are (H, W, 3) uint8 or float arrays (a
(3, H, W) torch tensor is accepted too); masks are (N, H, W) bool; points (x, y) pixels;
boxes XYXY inclusive pixel extents.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from lora_sam.prompts import sample_points
from lora_sam.targets import box_sample, masks_to_boxes, point_sample

__all__ = [
    "plot_bars",
    "plot_box_sample",
    "plot_curves",
    "plot_examples",
    "plot_interactive_rounds",
    "plot_point_sample",
    "target_figure_prompts",
    "target_figures",
]

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


def _save(fig: Figure, out_path: str | Path, dpi: int = 100) -> Path:
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _overlay(ax: Axes, image: np.ndarray, mask: np.ndarray | None, color: np.ndarray = _MASK_COLOR) -> None:
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


def plot_curves(
    panels: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]],
    out_path: str | Path,
    *,
    title: str | None = None,
    xlabel: str = "training step",
) -> Path:
    """Line plots, one panel per key: ``{panel title: {series label: (x, y)}}``.

    A series whose label contains ``val`` is drawn dashed with markers; the train and val series of one
    run (``"LoRA train"``, ``"LoRA val"``) share a colour. An empty panel says "not logged".
    """
    names = list(panels)
    columns = min(len(names), 4) or 1
    rows = max(1, -(-len(names) // columns))
    fig = _new_figure(4.0 * columns, 3.0 * rows + (0.4 if title else 0.0))
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    colours: dict[str, str] = {}
    for ax, name in zip(axes, names):
        for label, (x, y) in panels[name].items():
            series = re.sub(r" (train|val)\b", "", label)
            colour = colours.setdefault(series, f"C{len(colours)}")
            if "val" in label:
                ax.plot(x, y, "o--", color=colour, label=label, markersize=3, linewidth=1)
            else:
                ax.plot(x, y, "-", color=colour, label=label, linewidth=1.2)
        if not panels[name]:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if panels[name]:
            ax.legend(fontsize=7)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return _save(fig, out_path)


def plot_bars(
    panels: Mapping[str, Mapping[str, float | None]],
    out_path: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """Bar charts, one panel per key: ``{panel title: {bar label: value}}``; None is drawn as "n/a".

    A label keeps its colour in every panel.
    """
    names = list(panels)
    colours = {label: f"C{i}" for i, label in enumerate(dict.fromkeys(k for p in panels.values() for k in p))}
    fig = _new_figure(3.2 * max(len(names), 1), 3.2 + (0.4 if title else 0.0))
    axes = np.atleast_1d(fig.subplots(1, max(len(names), 1))).ravel()
    for ax, name in zip(axes, names):
        labels = list(panels[name])
        values = [panels[name][k] for k in labels]
        heights = [0.0 if v is None else float(v) for v in values]
        bars = ax.bar(range(len(labels)), heights, color=[colours[k] for k in labels])
        for bar, value in zip(bars, values):
            text = "n/a" if value is None else (f"{value:.3f}" if abs(value) < 10 else f"{value:,.0f}")
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                        fontsize=7)
        ax.set_xticks(range(len(labels)), labels, rotation=25, ha="right", fontsize=8)
        ax.set_title(name, fontsize=10)
        ax.margins(y=0.15)
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, out_path)


def plot_interactive_rounds(
    image: np.ndarray | torch.Tensor,
    rounds: Sequence[Mapping[str, np.ndarray | torch.Tensor]],
    out_path: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """One target through the interactive iterations: a row per iteration.

    Each row shows the image with every point so far (positive green, negative red, the point added
    in this iteration ringed in yellow), the target's outline (white) and the model's chosen mask,
    then the 3 GT masks assigned at that iteration (``point_sample`` over all points so far), big to small.

    Arguments:
      image: (H, W, 3) or (3, H, W) image.
      rounds: per iteration {"points": (P, 2), "labels": (P,), "gt": (3, H, W), "pred": (H, W),
        "target": (H, W)}.
      out_path: PNG file to write.
    """
    img = _rgb(image)
    height, width = img.shape[:2]
    panel = 2.6
    fig = _new_figure(4 * panel, len(rounds) * panel * height / width + 0.5 + (0.3 if title else 0.0))
    axes = np.atleast_2d(fig.subplots(len(rounds), 4))
    for it, (row, rnd) in enumerate(zip(axes, rounds), start=1):
        points, labels = _numpy(rnd["points"]).reshape(-1, 2), _numpy(rnd["labels"]).reshape(-1)
        gt, pred, target = (_numpy(rnd[k]).astype(bool) for k in ("gt", "pred", "target"))
        _overlay(row[0], img, pred, np.array([0.95, 0.55, 0.1]))
        row[0].contour(target.astype(float), levels=[0.5], colors=["white"], linewidths=1.0, linestyles="--")
        row[0].set_title(f"iteration {it}: {len(points)} point{'s' * (len(points) > 1)}", fontsize=9)
        for ax, mask, name in zip(row[1:], gt, _RANK_NAMES):
            _overlay(ax, img, mask)
            ax.set_title(f"GT {name}" if mask.any() else f"GT {name}: none", fontsize=9)
        for ax in row:
            _draw_points(ax, points, labels)
            if len(points) and labels[-1] >= 0:
                ax.scatter(points[-1:, 0], points[-1:, 1], s=220, facecolors="none", edgecolors=_BOX, linewidths=2)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, out_path)


def plot_examples(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    out_path: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """Prompts side by side: the image with its click(s), then one mask per column.

    Arguments:
      rows: each {"image": (H, W, 3), "points": (P, 2), "labels": (P,), "label": str (row title),
        "masks": [(H, W) bool per column], "captions": [str per column]}.
      columns: column titles of the masks (e.g. "GT", "LoRA 96x128", "original 1024 px").
      out_path: PNG file to write.
    """
    if not rows:
        raise ValueError("plot_examples: no rows")
    first = _rgb(rows[0]["image"])
    panel = 2.4
    aspect = first.shape[0] / first.shape[1]
    fig = _new_figure((len(columns) + 1) * panel, len(rows) * (panel * aspect + 0.45) + (0.3 if title else 0.0))
    axes = np.atleast_2d(fig.subplots(len(rows), len(columns) + 1))
    colours = [np.array([0.1, 0.75, 0.3]), _MASK_COLOR, np.array([0.95, 0.55, 0.1]), np.array([0.7, 0.3, 0.9])]
    for line, row in zip(axes, rows):
        img = _rgb(row["image"])
        points, labels = _numpy(row["points"]).reshape(-1, 2), _numpy(row["labels"]).reshape(-1)
        _overlay(line[0], img, None)
        line[0].set_title(row.get("label", ""), fontsize=8)
        for j, (ax, mask, caption) in enumerate(zip(line[1:], row["masks"], row["captions"])):
            _overlay(ax, img, _numpy(mask).astype(bool), colours[j % len(colours)])
            ax.set_title(caption, fontsize=8)
        for ax in line:
            _draw_points(ax, points, labels)
    for ax, name in zip(axes[0, 1:], columns):
        ax.set_title(f"{name}\n{ax.get_title()}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, out_path)
