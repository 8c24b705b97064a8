"""Run by tests/test_train.py in subprocesses: a small LoRA run that records what it sees.

    python train_script.py DATA OUT CHECKPOINT MAX_STEPS DEVICES [--resume] [--pause-after N]
                           [--samples-per-epoch N --epochs E]   (MAX_STEPS -1: run E epochs)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

import lora_sam


class Record(Callback):
    def __init__(self, out: Path, pause_after: int | None) -> None:
        self.out, self.pause_after = out, pause_after

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            with open(self.out / "starts.txt", "a") as f:
                f.write(f"{trainer.global_step}\n")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.pause_after is not None and trainer.global_step >= self.pause_after:
            (self.out / "paused").write_text(str(trainer.global_step))
            time.sleep(600)  # the test kills us with SIGKILL here, after step N's checkpoint was written
        with open(self.out / f"rank{trainer.global_rank}.txt", "a") as f:
            f.write(json.dumps({"step": trainer.global_step, "ids": batch["image_id"]}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("out", type=Path)
    parser.add_argument("checkpoint")
    parser.add_argument("max_steps", type=int)
    parser.add_argument("devices", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--pause-after", type=int, default=None)
    parser.add_argument("--samples-per-epoch", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pl.seed_everything(0)
    model = lora_sam.LoRASAM(4, 4, model_type="tiny", checkpoint=args.checkpoint, image_size=(64, 96),
                             masks_per_image=4, iterations=2, lr=1e-3, warmup_steps=0)
    train, _ = lora_sam.get_loaders(args.data, image_size=(64, 96), batch_size=1, masks_per_image=4,
                                    num_workers=0, val_fraction=0.0, samples_per_epoch=args.samples_per_epoch)
    trainer = pl.Trainer(
        accelerator="cpu", devices=args.devices, strategy="ddp" if args.devices > 1 else "auto",
        max_steps=args.max_steps, max_epochs=args.epochs, default_root_dir=args.out, logger=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0,
        callbacks=[ModelCheckpoint(dirpath=args.out / "checkpoints", save_last=True, every_n_train_steps=1,
                                   save_top_k=-1), Record(args.out, args.pause_after)],
    )
    trainer.fit(model, train, ckpt_path="last" if args.resume else None)
    if trainer.is_global_zero:
        (args.out / "final_step.txt").write_text(str(trainer.global_step))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
