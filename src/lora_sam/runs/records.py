"""What the report's iteration figures and pairing table need, recorded at the end of training.

``IterationRecords`` (a Lightning callback) replays the interactive recipe with the trained model on the
first validation batch (every target starting from a point) and counts, over a few validation batches,
which GT mask each of the 3 outputs was paired with at its first decode; it writes both to
``iterations.pt`` in the run's log folder. ``lora_sam.report`` draws from that file alone, without
rebuilding the model or reading the data again.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from lora_sam.data.samples import batch_to
from lora_sam.io import atomic_path
from lora_sam.models.promptable import PromptableModel
from lora_sam.training.recipe import RecipeOptions, interactive_step

__all__ = ["FILE", "FORMAT", "IterationRecords", "iteration_records"]

FILE = "iterations.pt"
FORMAT = "lora_sam.iterations/1"
_KEYS = ("points", "labels", "gt", "pred", "target", "paired")


def _first_batch(val: Any) -> dict[str, Any] | None:
    return next((b for b in val if len(b["targets"]) and len(b["targets"][0])), None)


def pairing_counts(model: PromptableModel, val: Any, options: RecipeOptions, device: torch.device, *,
                   batches: int) -> dict[str, Any]:
    """Which GT (whole, part, sub-part; or none) each of the 3 outputs trained against at its first decode,
    counted over the point and box prompts of the first ``batches`` validation batches. Nothing with ``min``
    pairing (SAM 2.1's rule: the best output trains on the target, not a GT mask of its own)."""
    counts = torch.zeros(3, 4, dtype=torch.long)  # the last column: no mask loss (no distinct GT left for it)
    seen = images = 0
    for n, batch in enumerate(val):
        if n == batches or options.pairing == "min":
            break
        result = interactive_step(model, batch_to(batch, device), torch.Generator().manual_seed(n),
                                  replace(options, point_prob=0.5, iterations=1), keep_records=True)
        images += len(batch["image_id"])
        for record in result.records:
            for first in ([record["point"][0]] if record["point"] else []) + [record["box"]]:
                if first is None or first["gt"].shape[1] != 3:  # the single output, trained on the target
                    continue
                for row in first["paired"].tolist():
                    counts[torch.arange(3), [r if r >= 0 else 3 for r in row]] += 1
                    seen += 1
    return {"counts": counts.tolist(), "seen": seen, "images": images, "pairing": options.pairing}


def iteration_records(model: PromptableModel, val: Any, options: RecipeOptions, device: torch.device, *,
                      batches: int = 8) -> dict[str, Any] | None:
    """The content of ``iterations.pt``: the recipe replayed on the first validation image with every target
    starting from a point (prompt seed 0), cropped to the image, and ``pairing_counts``; None without
    validation data."""
    batch = _first_batch(val)
    if batch is None:
        return None
    batch = batch_to(batch, device)
    with torch.no_grad():
        result = interactive_step(model, batch, torch.Generator().manual_seed(0), replace(options, point_prob=1.0),
                                  keep_records=True)
        pairing = pairing_counts(model, val, options, device, batches=batches)
    ih, iw = (int(v) for v in batch["input_size"][0])
    rounds = [{k: (r[k][..., :ih, :iw] if k in ("gt", "pred", "target") else r[k]).cpu() for k in _KEYS}
              for r in result.records[0]["point"]]
    image = batch["image"][0][:, :ih, :iw].float().round().clamp(0, 255).to(torch.uint8).cpu()
    return {"format": FORMAT, "image_id": str(batch["image_id"][0]), "image": image, "rounds": rounds,
            "iterations": options.iterations, "box_iterations": options.box_iterations, "pairing": pairing}


class IterationRecords(Callback):
    """At the end of training, ``iteration_records`` of the trained model into the run's log folder
    (``iterations.pt``), for the report's iteration figures and pairing table."""

    def __init__(self, batches: int = 8) -> None:
        self.batches = batches
        self.path: Path | None = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        val = trainer.val_dataloaders
        if not trainer.is_global_zero or not val:
            return
        val = val[0] if isinstance(val, (list, tuple)) else val
        was_training = pl_module.training
        pl_module.eval()
        try:
            record = iteration_records(pl_module.promptable, val, pl_module.recipe, pl_module.device,
                                       batches=self.batches)
        finally:
            pl_module.train(was_training)
        if record is not None:
            self.path = Path(trainer.log_dir or trainer.default_root_dir) / FILE
            with atomic_path(self.path) as tmp:
                torch.save(record, tmp)
