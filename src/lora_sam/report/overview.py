"""The report's overview figure: one held-out image, every evaluation target on it, one click each, the base's
answers beside the LoRA model's (the figure the README opens with for the real-nuclei demo).

From the run folder only: the prompts of ``eval.json`` (the same for every model), the base checkpoint and the
LoRA adapter; each answer is the output with the highest predicted IoU, as the evaluation's first click.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from lora_sam.report.drawing import POSITIVE_COLOR, new_figure, palette, save, to_rgb
from lora_sam.report.run_folder import Missing, Run, find_samples, first_click_masks
from lora_sam.training.metrics import mask_iou

__all__ = ["overview_figure", "plot_overview"]



def plot_overview(image: torch.Tensor | np.ndarray, gt: list[torch.Tensor], answers: dict[str, list[torch.Tensor]],
                  clicks: np.ndarray, out_path: str | Path, *, title: str) -> Path:
    """The image, its GT targets, then one panel per model with its answer to each target's click.

    Each target keeps its colour in every panel; a model panel's title gives its mean IoU over the targets.
    ``clicks``: (N, 2) xy, one per target."""
    picture = to_rgb(image).astype(np.float64)
    colours = palette(len(gt))
    panels: list[tuple[str, list[torch.Tensor] | None]] = [("image", None), (f"GT: {len(gt)} targets", gt)]
    for name, masks in answers.items():
        ious = [float(mask_iou(m, g)) for m, g in zip(masks, gt)]
        panels.append((f"{name}: 1 click, mIoU {np.mean(ious):.2f}", masks))
    fig = new_figure(3.2 * len(panels), 3.6)
    for index, (caption, masks) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), index + 1)
        canvas = picture.copy()
        for k, mask in enumerate(masks or []):
            m = mask.numpy().astype(bool)
            canvas[m] = 0.4 * canvas[m] + 0.6 * colours[k]
        ax.imshow(canvas)
        if masks is not None and index > 1:
            ax.scatter(clicks[:, 0], clicks[:, 1], s=14, c=POSITIVE_COLOR, edgecolors="white", linewidths=0.6)
        ax.set_title(caption, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return save(fig, out_path)


def _busiest_image(prompts: dict[str, Any]) -> tuple[str, list[int]]:
    """The evaluation image with the most prompts (ties: the first) and its prompt indices."""
    rows: dict[str, list[int]] = {}
    for i, image_id in enumerate(prompts["image_id"]):
        rows.setdefault(str(image_id), []).append(i)
    return max(rows.items(), key=lambda item: len(item[1]))


def overview_figure(run: Run) -> tuple[Path, str]:
    """``figures/overview.png`` and a sentence on it: the base and the LoRA model on the busiest held-out image."""
    from lora_sam.evaluation.options import EvalModels
    from lora_sam.evaluation.run import build_segmenters

    lora = run.eval_model("lora")
    if lora is None or run.eval_model("base") is None:
        raise Missing(f"a base and a LoRA model in `{run.root / 'eval.json'}`")
    prompts = lora[1]["prompts"]
    image_id, rows = _busiest_image(prompts)
    sample = find_samples(run, {image_id})[image_id]
    models = EvalModels(run.model_type, run.base_checkpoint, run.image_size,
                        adapters=(run.locate(lora[1]["path"], "lora/adapter.safetensors"),), base=True)
    built = build_segmenters(models, device=run.device)
    ih, iw = (int(v) for v in sample["input_size"])
    answers = {}
    for kind, name in (("base", "base"), ("lora", "LoRA")):
        segmenter = next(seg for seg, info in built.values() if info["kind"] == kind)
        answers[name] = [m[:ih, :iw] for m in first_click_masks(segmenter, sample, prompts, rows)]
    gt = [sample["masks"][int(prompts["mask_index"][i])].bool()[:ih, :iw] for i in rows]
    clicks = np.array([prompts["click_points"][i][0] for i in rows], dtype=np.float64)
    path = plot_overview(sample["image"][:, :ih, :iw], gt, answers, clicks, run.figures / "overview.png",
                         title=f"held-out image {image_id}: one click on each target, base vs LoRA")
    text = (f"The evaluation image with the most targets (`{image_id}`, {len(rows)} of them): each target's first "
            f"click (its most interior point) and each model's answer, the output with the highest predicted IoU; "
            f"the colours pair every answer with its target.")
    return path, text
