"""9. The automatic mode ("segment everything"): proposal recall of each model's automatic masks on both
domains (``eval.json``, ``source/eval.json``) and a figure of each model's masks on the same image
(``automatic.pt``, written by ``lora-sam eval --automatic``): from the run folder only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from lora_sam.io import markdown_table
from lora_sam.report.drawing import new_figure, palette, save, to_rgb
from lora_sam.report.run_folder import Missing, Run

__all__ = ["automatic_section", "plot_automatic"]



def plot_automatic(image: torch.Tensor, masks: dict[str, torch.Tensor], scores: dict[str, torch.Tensor],
                   out_path: str | Path) -> Path:
    """One panel per model: its automatic masks on the image, each its own colour, best predicted IoU on top."""
    picture = to_rgb(image).astype(np.float64)  # 0..1
    fig = new_figure(4.0 * len(masks), 3.6)
    for index, (name, found) in enumerate(masks.items()):
        ax = fig.add_subplot(1, len(masks), index + 1)
        canvas = picture.copy()
        colours = palette(len(found))
        for k in reversed(range(len(found))):
            mask = found[k].numpy().astype(bool)
            canvas[mask] = 0.45 * canvas[mask] + 0.55 * colours[k]
        ax.imshow(canvas)
        best = f", best {float(scores[name][0]):.2f}" if len(scores[name]) else ""
        ax.set_title(f"{name}: {len(found)} masks{best}", fontsize=9)
        ax.axis("off")
    return save(fig, out_path)


def _ar_rows(report: dict[str, Any]) -> dict[str, tuple[float, float, float]]:
    return {name: (e["automatic"]["ar@100"], e["automatic"]["ar@1000"], e["automatic"]["proposals_per_image"])
            for name, e in report["models"].items() if "automatic" in e}


def automatic_section(run: Run) -> str:
    """AR@100 / AR@1000 per model and domain, and the figure of the first scored image."""
    domains = {"target domain (eval.json)": run.eval}
    if (run.root / "source" / "eval.json").is_file():
        domains["source domain (source/eval.json)"] = run.json("source/eval.json")
    rows = {title: _ar_rows(report) for title, report in domains.items()}
    if not any(rows.values()):
        raise Missing("automatic-mask results in `eval.json` (run `lora-sam eval --automatic`)")
    settings = run.eval["settings"]
    table = [[title, name, f"{ar100:.3f}", f"{ar1000:.3f}", f"{count:.0f}"]
             for title, found in rows.items() for name, (ar100, ar1000, count) in found.items()]
    text = [
        "SAM's automatic mode prompts a grid of points, keeps the confident masks and removes duplicates; SAM's "
        "paper scores it as an object-proposal method, by average recall (AR@N: the share of ground-truth masks "
        "matched by one of the N best-ranked masks, averaged over IoU 0.5:0.95). Each model runs as deployed, at "
        f"1024 px (the base as the original pipeline, LoRA merged, full), with a {settings.get('automatic_points')}"
        f"x{settings.get('automatic_points')} point grid on the first {settings.get('automatic_images') or 'all'} "
        "images, the masks ranked by predicted IoU (the generator's quality filters off: tuned for ViT-H, they "
        "would leave a small model nothing to rank).", "",
        markdown_table(["domain", "model", "AR@100", "AR@1000", "masks per image"], table, "llrrr"), "",
    ]
    path = run.root / "automatic.pt"
    if path.is_file():
        example = torch.load(path, map_location="cpu", weights_only=True)
        figure = plot_automatic(example["image"], example["masks"], example["scores"],
                                run.figures / "automatic_masks.png")
        text += [f"Each model's automatic masks on `{example['image_id']}` (target domain), the "
                 f"{len(next(iter(example['masks'].values())))} best at most:", "",
                 f"![automatic masks](figures/{figure.name})"]
    return "\n".join(text)
