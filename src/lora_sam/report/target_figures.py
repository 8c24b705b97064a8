"""The target-assignment figures: the 3 ground-truth masks ``point_sample`` and ``box_sample`` give a prompt.

Each figure shows the prompt, then the 3 assigned masks, largest first; ``target_figures`` picks
the prompts on one image (``target_figure_prompts``) and writes the 4 figures of the report's
section on target assignment. Drawn with ``lora_sam.report.drawing``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes

from lora_sam.report import drawing
from lora_sam.training.prompts import noisy_boxes, sample_points
from lora_sam.training.targets import box_sample, masks_to_boxes, point_sample

__all__ = ["plot_box_sample", "plot_point_sample", "target_figure_prompts", "target_figures"]


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
    masks = drawing.to_numpy(all_masks).astype(bool)
    pts, lab = drawing.to_numpy(points).reshape(-1, 2), drawing.to_numpy(labels).reshape(-1)
    chosen = point_sample(masks, pts, lab)

    def draw_prompt(ax: Axes) -> None:
        drawing.draw_points(ax, pts, lab)

    return _plot_targets(drawing.to_rgb(image), chosen, draw_prompt, out_path, title)


def plot_box_sample(
    image: np.ndarray | torch.Tensor,
    all_masks: np.ndarray | torch.Tensor,
    box: np.ndarray | torch.Tensor | tuple[float, float, float, float],
    out_path: str | Path,
    title: str | None = None,
    *,
    include: int | None = None,
) -> Path:
    """Draw a box prompt, ``box`` (4,) XYXY in pixels, and the 3 masks ``box_sample`` assigns to it, big to
    small (``include``: the index of the mask the box was drawn from, kept among them); the other arguments
    and the result are those of ``plot_point_sample``."""
    masks = drawing.to_numpy(all_masks).astype(bool)
    xyxy = np.asarray(drawing.to_numpy(box), dtype=np.float64).reshape(4)
    chosen = box_sample(masks, xyxy, include=include)

    def draw_prompt(ax: Axes) -> None:
        drawing.draw_box(ax, xyxy)

    return _plot_targets(drawing.to_rgb(image), chosen, draw_prompt, out_path, title)


def target_figure_prompts(
    all_masks: np.ndarray | torch.Tensor, generator: torch.Generator
) -> dict[str, dict[str, np.ndarray]]:
    """Prompts that show target assignment on one image: whole objects, parts and sub-parts.

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
      - ``box``: P's box with the training recipe's noise (std 10 % of each side, at most 20 px of
        SAM's 1024 px frame), with ``target`` the index of P in ``all_masks`` (None when P is the
        whole image), which ``box_sample`` keeps among the 3 however the noise cuts it.

    C contains the positives and not the negatives, so every point case has a candidate
    (unless a single mask covers the whole image and there is nowhere to put a negative).

    Arguments:
      all_masks: (N, H, W) bool masks, N >= 1, at least one non-empty.
      generator: CPU generator for the random choices.

    Returns:
      Name -> {"points": (P, 2) float32, "labels": (P,) int64} or {"box": (4,) float32, "target": int | None}.
    """
    every = torch.as_tensor(drawing.to_numpy(all_masks).astype(bool))
    masks = every[every.flatten(1).any(1)]
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
        "box": {"box": noisy_boxes(masks_to_boxes(parent[None]), generator, image_size=tuple(parent.shape),
                                   max_noise=20.0 * max(parent.shape) / 1024)[0].numpy(),
                "target": next((i for i in range(len(every)) if torch.equal(every[i], parent)), None)},
    }


def target_figures(
    image: np.ndarray | torch.Tensor,
    all_masks: np.ndarray | torch.Tensor,
    out_dir: str | Path,
    generator: torch.Generator,
    *,
    prefix: str = "targets",
) -> list[Path]:
    """Write the 4 target-assignment figures of the report (its section on how targets are assigned).

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
        "box": "box_sample: the target's box with training noise",
    }
    paths = []
    for name, prompt in target_figure_prompts(all_masks, generator).items():
        path = out / f"{prefix}_{name}.png"
        if "box" in prompt:
            paths.append(plot_box_sample(image, all_masks, prompt["box"], path, titles[name], include=prompt["target"]))
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
    fig = drawing.new_figure(4 * panel, panel * height / width + (0.6 if title else 0.3))
    axes = fig.subplots(1, 4)
    drawing.overlay(axes[0], image, None)
    axes[0].set_title("prompt")
    for ax, mask, name in zip(axes[1:], chosen, drawing.RANK_NAMES):
        drawing.overlay(ax, image, mask)
        ax.set_title(f"{name}: area {int(mask.sum())}" if mask.any() else f"{name}: no candidate")
    for ax in axes:
        draw_prompt(ax)
    if title:
        fig.suptitle(title)
    return drawing.save(fig, out_path)
