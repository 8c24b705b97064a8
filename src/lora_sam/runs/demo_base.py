"""The synthetic demo's ``--train-base`` path: a ``tiny`` SAM trained briefly from random weights as the base, and
its metrics at the training resolution (``lora-sam demo --synthetic --train-base``). ``config`` is the demo's
``DemoConfig`` (not imported here: ``demo`` imports this module)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from lora_sam.training.options import OptimOptions

__all__ = ["evaluate_low_res", "train_base"]


def train_base(out: Path, data: Path, config: Any) -> dict[str, Any]:
    """A ``tiny`` SAM from a fixed seed, fully fine-tuned on ``data``; writes init.pth and base.pth (1024 px format)."""
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import CSVLogger

    from lora_sam.data.loaders import get_loaders
    from lora_sam.models.sam_v1.model import build_sam
    from lora_sam.training.module import LoRASAM

    pl.seed_everything(config.seed, verbose=False)
    init = build_sam("tiny", image_size=(1024, 1024))
    init_path, base_path = out / "init.pth", out / "base.pth"
    torch.save(init.state_dict(), init_path)
    recipe = config.base_module_recipe()
    optim = OptimOptions(lr=config.base_lr, warmup_steps=min(50, config.base_steps // 10))
    model = LoRASAM(finetune="full", model_type="tiny", checkpoint=str(init_path), image_size=config.image_size,
                    recipe=recipe, optim=optim, seed=config.seed)
    model.sam.image_encoder.pos_embed.requires_grad_(False)
    train_loader, _ = get_loaders(data, image_size=config.image_size, batch_size=config.finetune.batch_size,
                                  masks_per_image=recipe.masks_per_image, val_fraction=0.0, num_workers=0,
                                  seed=config.seed)
    trainer = pl.Trainer(max_steps=config.base_steps, accelerator="cpu", devices=1, limit_val_batches=0,
                         logger=CSVLogger(str(out), name="base_train", version=""), enable_checkpointing=False,
                         enable_model_summary=False, log_every_n_steps=5, num_sanity_val_steps=0)
    start = time.perf_counter()
    trainer.fit(model, train_loader)
    seconds = time.perf_counter() - start
    state = {k: v.detach().cpu() for k, v in model.sam.state_dict().items()}
    state["image_encoder.pos_embed"] = init.image_encoder.pos_embed.detach().clone()
    torch.save(state, base_path)
    build_sam("tiny", base_path, (1024, 1024))  # the official 1024 px format loads
    return {"source": "trained", "model_type": "tiny", "checkpoint": str(base_path), "init": str(init_path),
            "parameters": sum(p.numel() for p in init.parameters()), "steps": int(trainer.global_step),
            "lr": config.base_lr, "image_size": list(config.image_size), "data": str(data), "seconds": seconds,
            "device": "cpu", "masks_per_image": recipe.masks_per_image, "iterations": recipe.iterations,
            "loss": dict(zip(("focal", "dice", "iou"), recipe.loss_weights()))}


def evaluate_low_res(checkpoint: str, data: Path, config: Any) -> dict[str, Any]:
    """Metrics of a ``tiny`` checkpoint at the training resolution on the demo's evaluation prompts."""
    from lora_sam.evaluation.options import EvalModels
    from lora_sam.evaluation.run import evaluate_models

    options = replace(config.eval_options("val"), automatic=False)
    report = evaluate_models(data, None, EvalModels("tiny", checkpoint, config.image_size), options, device="cpu",
                             progress=False)
    return report["models"]["base"]["metrics"]
