"""The report's training and evaluation figures: curves, bar charts, interactive rounds, examples.

Drawn with ``lora_sam.report.drawing`` (Agg canvas, no pyplot state); the target-assignment
figures of ``point_sample`` / ``box_sample`` are in ``lora_sam.report.target_figures``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.patches import Rectangle

from lora_sam.report import drawing

__all__ = ["plot_bars", "plot_curves", "plot_examples", "plot_interactive_rounds"]


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
    fig = drawing.new_figure(4.0 * columns, 3.0 * rows + (0.4 if title else 0.0))
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
    return drawing.save(fig, out_path)


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
    fig = drawing.new_figure(3.2 * max(len(names), 1), 3.2 + (0.4 if title else 0.0))
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
    return drawing.save(fig, out_path)


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
    then the GT masks of that iteration: the 3 of ``point_sample``, big to small, each titled with the
    output that trained against it (``paired``), or the target alone when the single-mask output trained.

    Arguments:
      image: (H, W, 3) or (3, H, W) image.
      rounds: per iteration {"points": (P, 2), "labels": (P,), "gt": (3 or 1, H, W), "pred": (H, W),
        "target": (H, W)} and optionally "paired": (3,) the GT index each output was paired with.
      out_path: PNG file to write.
    """
    img = drawing.to_rgb(image)
    x0, x1, y0, y1 = _window(rounds, img.shape[:2])
    panel = 2.6
    fig = drawing.new_figure(4 * panel, len(rounds) * panel * (y1 - y0) / (x1 - x0) + 0.5 + (0.3 if title else 0.0))
    axes = np.atleast_2d(fig.subplots(len(rounds), 4))
    for it, (row, rnd) in enumerate(zip(axes, rounds), start=1):
        points, labels = drawing.to_numpy(rnd["points"]).reshape(-1, 2), drawing.to_numpy(rnd["labels"]).reshape(-1)
        gt, pred, target = (drawing.to_numpy(rnd[k]).astype(bool) for k in ("gt", "pred", "target"))
        drawing.overlay(row[0], img, pred, np.array([0.95, 0.55, 0.1]))
        row[0].contour(target.astype(float), levels=[0.5], colors=["white"], linewidths=1.0, linestyles="--")
        row[0].set_title(f"iteration {it}: {len(points)} point{'s' * (len(points) > 1)}", fontsize=9)
        paired = drawing.to_numpy(rnd["paired"]).reshape(-1) if "paired" in rnd else None
        for c, ax in enumerate(row[1:]):
            if c >= len(gt):
                ax.set_visible(False)
                continue
            drawing.overlay(ax, img, gt[c])
            ax.set_title(_gt_title(c, len(gt), gt[c].any(), paired), fontsize=9)
        for ax in row[: 1 + len(gt)]:
            drawing.draw_points(ax, points, labels)
            if len(points) and labels[-1] >= 0:
                ax.scatter(points[-1:, 0], points[-1:, 1], s=220, facecolors="none", edgecolors=drawing.BOX_COLOR,
                           linewidths=2)
            ax.set_xlim(x0 - 0.5, x1 - 0.5)
            ax.set_ylim(y1 - 0.5, y0 - 0.5)
        _frame_inset(row[0], img, (x0, x1, y0, y1))
    if title:
        fig.suptitle(title, fontsize=10)
    return drawing.save(fig, out_path)


def _window(rounds: Sequence[Mapping[str, Any]], shape: tuple[int, int], *, margin: float = 0.6,
            least: int = 48) -> tuple[int, int, int, int]:
    """(x0, x1, y0, y1), end exclusive: the target's box and every point, widened by ``margin`` of its size
    on each side, at least ``least`` px wide and high, inside the image; the whole image when empty."""
    height, width = shape
    target = drawing.to_numpy(rounds[0]["target"]).astype(bool)
    points = np.concatenate([drawing.to_numpy(r["points"]).reshape(-1, 2) for r in rounds])
    ys, xs = np.nonzero(target)
    xs, ys = np.concatenate([xs, points[:, 0]]), np.concatenate([ys, points[:, 1]])
    if not len(xs):
        return 0, width, 0, height
    spans = []
    for lo, hi, size in ((xs.min(), xs.max() + 1, width), (ys.min(), ys.max() + 1, height)):
        pad = max(margin * (hi - lo), (least - (hi - lo)) / 2, 0)
        a, b = max(0, int(np.floor(lo - pad))), min(size, int(np.ceil(hi + pad)))
        spans.append((a, b))
    (x0, x1), (y0, y1) = spans
    return x0, x1, y0, y1


def _frame_inset(ax: Any, img: np.ndarray, window: tuple[int, int, int, int]) -> None:
    """The whole frame, small, in the panel's corner, with the window drawn on it (when the panel is a crop)."""
    x0, x1, y0, y1 = window
    height, width = img.shape[:2]
    if (x0, x1, y0, y1) == (0, width, 0, height):
        return
    inset = ax.inset_axes([0.64, 0.64, 0.35, 0.35])
    inset.imshow(img)
    inset.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="yellow", linewidth=1))
    inset.set_xticks([])
    inset.set_yticks([])


def _gt_title(c: int, count: int, present: bool, paired: np.ndarray | None) -> str:
    if count == 1:
        return "GT: the target (single output)"
    name = f"GT {drawing.RANK_NAMES[c]}" + ("" if present else ": none")
    if paired is not None and (paired == c).any():
        name += f" <- output {int(np.argmax(paired == c)) + 1}"
    return name


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
    first = drawing.to_rgb(rows[0]["image"])
    panel = 2.4
    aspect = first.shape[0] / first.shape[1]
    fig = drawing.new_figure((len(columns) + 1) * panel, len(rows) * (panel * aspect + 0.45) + (0.3 if title else 0.0))
    axes = np.atleast_2d(fig.subplots(len(rows), len(columns) + 1))
    colours = [np.array([0.1, 0.75, 0.3]), drawing.MASK_COLOR, np.array([0.95, 0.55, 0.1]), np.array([0.7, 0.3, 0.9])]
    for line, row in zip(axes, rows):
        img = drawing.to_rgb(row["image"])
        points, labels = drawing.to_numpy(row["points"]).reshape(-1, 2), drawing.to_numpy(row["labels"]).reshape(-1)
        drawing.overlay(line[0], img, None)
        line[0].set_title(row.get("label", ""), fontsize=8)
        for j, (ax, mask, caption) in enumerate(zip(line[1:], row["masks"], row["captions"])):
            drawing.overlay(ax, img, drawing.to_numpy(mask).astype(bool), colours[j % len(colours)])
            ax.set_title(caption, fontsize=8)
        for ax in line:
            drawing.draw_points(ax, points, labels)
    for ax, name in zip(axes[0, 1:], columns):
        ax.set_title(f"{name}\n{ax.get_title()}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return drawing.save(fig, out_path)
