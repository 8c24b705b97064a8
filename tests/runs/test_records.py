"""``runs.records``: what the report's iteration figures are drawn from, written at the end of training."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytorch_lightning as pl
import torch

from lora_sam import LoRASAM, get_loaders
from lora_sam.runs.records import FILE, IterationRecords
from lora_sam.training.recipe import interactive_step

SIZE = (64, 96)


def test_the_records_are_a_replay_of_the_trained_model(tmp_path: Path, tiny_checkpoint: Path,
                                                       synthetic_root: Path) -> None:
    """iterations.pt holds the recipe replayed by the trained model on the first val image (every target from a
    point, prompt seed 0), cropped to the image: the same as replaying it here, after training."""
    model = LoRASAM(4, 4, model_type="tiny", checkpoint=str(tiny_checkpoint), image_size=SIZE, masks_per_image=4,
                    iterations=3, lr=1e-3)
    train, val = get_loaders(synthetic_root, image_size=SIZE, batch_size=2, num_workers=0, masks_per_image=4,
                             val_fraction=0.3)
    callback = IterationRecords(batches=2)
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                         callbacks=[callback], default_root_dir=tmp_path)
    trainer.fit(model, train, val)
    saved = torch.load(tmp_path / FILE, weights_only=True)
    batch = next(b for b in val if len(b["targets"][0]))
    model.eval()
    with torch.no_grad():
        again = interactive_step(model.promptable, batch, torch.Generator().manual_seed(0),
                                 replace(model.recipe, point_prob=1.0), keep_records=True)
    ih, iw = (int(v) for v in batch["input_size"][0])
    assert saved["image_id"] == str(batch["image_id"][0]) and tuple(saved["image"].shape) == (3, ih, iw)
    assert len(saved["rounds"]) == len(again.records[0]["point"]) == 3
    for got, want in zip(saved["rounds"], again.records[0]["point"]):
        assert torch.equal(got["points"], want["points"]) and torch.equal(got["paired"], want["paired"])
        assert torch.equal(got["pred"], want["pred"][..., :ih, :iw])
        assert torch.equal(got["gt"], want["gt"][..., :ih, :iw])
    pairing = saved["pairing"]
    assert sum(map(sum, pairing["counts"])) == 3 * pairing["seen"] and pairing["seen"] > 0
