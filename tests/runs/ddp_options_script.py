"""Run by tests/runs/test_ddp.py as one of 2 processes (gloo): a few DDP steps for each recipe option.

    python ddp_options_script.py DATA CHECKPOINT OUT RANK PORT

Both processes run the same list of cases, each a Lightning ``Trainer(strategy="ddp", devices=2)`` of
2 steps on the tiny model (the process group is made once, by the first); OUT/rank{RANK}.json records,
per case, "ok" or the error, and the validation metrics the rank saw.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy

import lora_sam

SIZE = (64, 96)
CASES = {
    "lora defaults": {},
    "lora boxes only, 1 iteration": {"point_prob": 0.0, "iterations": 1},
    "lora points only, 1 iteration": {"point_prob": 1.0, "iterations": 1},
    "lora boxes only, single output": {"point_prob": 0.0, "box_output": "single"},
    "lora points only, mask-only iteration": {"point_prob": 1.0, "iterations": 2, "mask_only_iterations": 1},
    "full boxes only": {"finetune": "full", "point_prob": 0.0},
    "full points only, 1 iteration": {"finetune": "full", "point_prob": 1.0, "iterations": 1},
    "full defaults": {"finetune": "full"},
    "points on rank 0, boxes on rank 1, validated": {"split_kinds": True},
    "non-finite loss on rank 1": {"nan_on_rank": 1},
    "non-finite loss on rank 1, skipped": {"nan_on_rank": 1, "on_nonfinite": "skip"},
}


class Probe(lora_sam.LoRASAM):
    """LoRASAM with two test hooks: prompts of one kind per rank, and a NaN loss on one rank."""

    split_kinds = False
    nan_on_rank: int | None = None

    def interactive_step(self, batch, generator, *, keep_records=False):
        if self.split_kinds:
            self.recipe = replace(self.recipe, point_prob=1.0 if self.global_rank == 0 else 0.0)
        result = super().interactive_step(batch, generator, keep_records=keep_records)
        if self.nan_on_rank == self.global_rank:
            result.terms = {k: (s * float("nan"), n) for k, (s, n) in result.terms.items()}
        return result


def run_case(options: dict, data: str, checkpoint: str, out: Path) -> dict:
    options = dict(options)
    split, nan_rank = options.pop("split_kinds", False), options.pop("nan_on_rank", None)
    pl.seed_everything(0, verbose=False)
    model = Probe(4, 4, model_type="tiny", checkpoint=checkpoint, image_size=SIZE, masks_per_image=4, lr=1e-3,
                  warmup_steps=0, **options)
    model.split_kinds, model.nan_on_rank = split, nan_rank
    train, val = lora_sam.get_loaders(data, image_size=SIZE, batch_size=1, masks_per_image=4, num_workers=0,
                                      val_fraction=0.25)
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy=DDPStrategy(timeout=timedelta(seconds=60)), max_steps=2,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=1 if split else 0, val_check_interval=2 if split else None, num_sanity_val_steps=0,
        default_root_dir=out,
    )
    try:
        trainer.fit(model, train, val if split else None)
    except Exception as err:  # recorded for the test to read
        return {"result": f"{type(err).__name__}: {err}".splitlines()[0]}
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val")}
    return {"result": "ok", "val": metrics}


def main() -> None:
    data, checkpoint, out, rank, port = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4], sys.argv[5]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE="2", NODE_RANK="0", LOCAL_RANK=rank)
    torch.set_num_threads(1)
    record = {name: run_case(options, data, checkpoint, out) for name, options in CASES.items()}
    (out / f"rank{rank}.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
