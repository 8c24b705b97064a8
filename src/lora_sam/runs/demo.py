"""``lora-sam demo``: the whole job on built-in synthetic data, on the CPU, ending in a report.

Stages (folder ``--out``, default ``runs/demo``)::

    1. data/base, data/finetune   two disjoint synthetic SA-1B parts (different seeds and image ids)
    2. base.pth                   the base model: ``--checkpoint`` if given; else a ``tiny`` SAM drawn
                                  from a fixed seed (init.pth), fully fine-tuned briefly on data/base
                                  (base_train/: metrics.csv, hparams.yaml), saved in the official
                                  1024 px format (position embedding: init.pth's 64x64 table)
    3. lora/, full/, compare.*    LoRA and full fine-tuning from base.pth on data/finetune, same seed
       eval.*                     and steps; then base, LoRA, full and the original SAM pipeline
                                  (SamPredictor at 1024 px) on the same val images and prompts
    4. report.md, figures/        ``lora-sam report`` of the folder

``demo.json`` records the settings, how the base was made and the time of each stage.

Why ``DEFAULT`` looks as it does (measured on 2 shared CPU cores while choosing it): a ``tiny`` SAM
from random weights ignores the click for about 700 steps (it learns "objects vs background"
first), then starts to localise; 1200 steps at 64x96 (about 0.14 s each) bring the base from
mIoU@1 0.02 (random) to about 0.2, where 96x128 or 128x160 stay near 0.07 within the budget.
Stopping the base on the steep part of its curve leaves the fine-tuning runs something to gain
in 200 steps (LoRA +0.02 to +0.05 mIoU@1 over a 1200-step base across runs; +0.00 to +0.02 over a
1500-step one). How long it runs: ``RUN_TIME``.
SAM's 20 x focal weight (alpha 0.25) drives such a young model to empty masks (LoRA mIoU@1 0.04
against 0.24 for its base after 200 steps), so the demo's loss is dice + IoU head
(``focal_weight=0``). The 1024 px pipeline decodes 64x64 embeddings per prompt and click, the
slowest part on a CPU, so the evaluation is 8 images x 4 masks x 5 clicks.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from lora_sam.model import DEFAULT_IMAGE_SIZE

__all__ = ["DEFAULT", "QUICK", "RUN_TIME", "DemoConfig", "add_arguments", "run", "run_demo"]

RUN_TIME = "about 6 minutes on 2 CPU cores"
"""How long the demo runs with ``DEFAULT`` (measured: 5.8 minutes on 2 idle cores)."""


@dataclass(frozen=True)
class DemoConfig:
    """Sizes and hyperparameters of the demo; ``DEFAULT`` runs in ``RUN_TIME``."""

    # the data (stage 1) and the training resolution of every model
    images: int = 48  # per part (base, finetune)
    synth_size: tuple[int, int] = (192, 256)
    image_size: tuple[int, int] = (64, 96)
    # the tiny base model (stage 2, without --checkpoint)
    base_steps: int = 1200
    base_lr: float = 3e-4
    base_masks: int = 16
    base_iterations: int = 1
    base_point_prob: float = 0.5
    # LoRA and full fine-tuning (stage 3): the same settings, each its own learning rate
    steps: int = 200
    rank: int = 4
    alpha: float = 4.0
    lr_lora: float = 2e-3
    lr_full: float = 3e-4
    masks_per_image: int = 16
    batch_size: int = 1
    iterations: int = 3
    # the loss of every training run (base, LoRA, full)
    focal_weight: float = 0.0
    dice_weight: float = 1.0
    # validation curves and the evaluation (stage 3)
    val_fraction: float = 0.25
    val_batches: int | None = 8
    eval_images: int | None = 8
    eval_masks_per_image: int = 4
    max_clicks: int = 5
    seed: int = 0


DEFAULT = DemoConfig()
QUICK = DemoConfig(images=6, synth_size=(96, 128), image_size=(64, 96), base_steps=12, base_masks=4, steps=4,
                   masks_per_image=4, iterations=2, val_fraction=0.34, val_batches=2, eval_images=1,
                   eval_masks_per_image=3, max_clicks=3)


def _stage(number: int, text: str) -> float:
    print(f"\n[{number}/4] {text}", flush=True)
    return time.perf_counter()


def make_data(out: Path, config: DemoConfig) -> dict[str, Path]:
    """Write the two synthetic parts, one image at a time under a progress bar (same bytes as one call)."""
    from tqdm import tqdm

    from lora_sam.data.synth import make_synthetic

    parts = {"base": (config.seed + 1, 1), "finetune": (config.seed + 2, 1_000_001)}
    folders = {}
    for name, (seed, start) in parts.items():
        folder = out / "data" / name
        for i in tqdm(range(config.images), desc=f"synth {name}", unit="image"):
            make_synthetic(folder, 1, seed=seed, image_size=config.synth_size, start_id=start + i)
        folders[name] = folder
    return folders


def train_base(out: Path, data: Path, config: DemoConfig) -> dict[str, Any]:
    """A ``tiny`` SAM from a fixed seed, fully fine-tuned on ``data``; writes init.pth and base.pth (1024 px format)."""
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import CSVLogger

    from lora_sam.data.loaders import get_loaders
    from lora_sam.model import build_sam
    from lora_sam.module import LoRASAM

    pl.seed_everything(config.seed, verbose=False)
    init = build_sam("tiny", image_size=(1024, 1024))
    init_path, base_path = out / "init.pth", out / "base.pth"
    torch.save(init.state_dict(), init_path)
    model = LoRASAM(finetune="full", model_type="tiny", checkpoint=str(init_path), image_size=config.image_size,
                    lr=config.base_lr, warmup_steps=min(50, config.base_steps // 10), masks_per_image=config.base_masks,
                    iterations=config.base_iterations, point_prob=config.base_point_prob,
                    focal_weight=config.focal_weight,
                    dice_weight=config.dice_weight, seed=config.seed)
    model.sam.image_encoder.pos_embed.requires_grad_(False)
    train_loader, _ = get_loaders(data, image_size=config.image_size, batch_size=config.batch_size,
                                  masks_per_image=config.base_masks, val_fraction=0.0, num_workers=0, seed=config.seed)
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
            "device": "cpu", "masks_per_image": config.base_masks, "iterations": config.base_iterations,
            "loss": {"focal": config.focal_weight, "dice": config.dice_weight, "iou": 1.0}}


def _evaluate_low_res(checkpoint: str, data: Path, config: DemoConfig) -> dict[str, Any]:
    """Metrics of a ``tiny`` checkpoint at the training resolution on the demo's evaluation prompts."""
    from lora_sam.evaluation.run import evaluate_models

    report = evaluate_models(data, None, model_type="tiny", checkpoint=checkpoint, image_size=config.image_size,
                             val_fraction=config.val_fraction, max_images=config.eval_images,
                             masks_per_image=config.eval_masks_per_image, max_clicks=config.max_clicks,
                             seed=config.seed, device="cpu", progress=False)
    return report["models"]["base"]["metrics"]


def run_demo(out: str | Path, config: DemoConfig = DEFAULT, *, checkpoint: str | None = None,
             model_type: str | None = None) -> dict[str, Any]:
    """Run the 4 stages of the module docstring into ``out``; returns what ``demo.json`` records."""
    from lora_sam.report.build import write_report
    from lora_sam.runs.compare import compare

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    record: dict[str, Any] = {"config": asdict(config), "times_s": times, "threads": torch.get_num_threads()}
    total = time.perf_counter()

    start = _stage(1, f"synthetic SA-1B data: {config.images} images for the base, {config.images} for fine-tuning")
    folders = make_data(out, config)
    times["data"] = time.perf_counter() - start

    if checkpoint:
        from lora_sam.model import detect_model_type, load_checkpoint

        start = _stage(2, f"base model: {checkpoint}")
        model_type = model_type or detect_model_type(load_checkpoint(checkpoint))
        if model_type is None:
            raise ValueError(f"{checkpoint}: cannot tell the model type from its tensors; pass --model-type")
        record["base"] = {"source": "checkpoint", "checkpoint": str(Path(checkpoint).resolve()),
                          "model_type": model_type}
    else:
        start = _stage(2, f"base model: a tiny SAM trained {config.base_steps} steps on data/base (not Meta's weights)")
        record["base"] = train_base(out, folders["base"], config)
        record["base"]["random_init_metrics"] = _evaluate_low_res(record["base"]["init"], folders["finetune"], config)
        model_type = "tiny"
    times["base"] = time.perf_counter() - start
    _write_record(out, record)

    start = _stage(3, f"LoRA vs full fine-tuning, {config.steps} steps each, then evaluation of base, LoRA, full "
                      f"and the original pipeline at 1024 px")
    result = compare(folders["finetune"], out, model_type=model_type, checkpoint=record["base"]["checkpoint"],
                     image_size=config.image_size, steps=config.steps, rank=config.rank, alpha=config.alpha,
                     seed=config.seed, batch_size=config.batch_size, masks_per_image=config.masks_per_image,
                     lr_lora=config.lr_lora, lr_full=config.lr_full, val_fraction=config.val_fraction,
                     val_batches=config.val_batches,
                     eval_images=config.eval_images, eval_masks_per_image=config.eval_masks_per_image,
                     max_clicks=config.max_clicks, original=True,
                     iterations=config.iterations, focal_weight=config.focal_weight,
                     dice_weight=config.dice_weight)
    times["compare_and_eval"] = time.perf_counter() - start
    _write_record(out, record)

    start = _stage(4, "report")
    report = write_report(out)
    times["report"] = time.perf_counter() - start
    times["total"] = time.perf_counter() - total
    record.update(report=str(report), metrics={"base": result["base"]["metrics"],
                                               "lora": result["runs"]["lora"]["metrics"],
                                               "full": result["runs"]["full"]["metrics"],
                                               "original-1024": result.get("original", {}).get("metrics")})
    _write_record(out, record)
    return record


def _write_record(out: Path, record: dict[str, Any]) -> None:
    from lora_sam.evaluation.protocol import json_safe

    (out / "demo.json").write_text(json.dumps(json_safe(record), indent=1))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (f"Run the whole job on built-in synthetic data (CPU, {RUN_TIME}): data, a base model, "
                          "LoRA vs full fine-tuning, evaluation against the original SAM pipeline, and a report in "
                          "OUT/report.md")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="run folder (default runs/demo)")
    parser.add_argument("--checkpoint", default=None,
                        help="an official SAM checkpoint as the base (default: train a tiny SAM briefly); then the "
                             f"training resolution defaults to {DEFAULT_IMAGE_SIZE[0]} {DEFAULT_IMAGE_SIZE[1]} and the loss to "
                             "SAM's 20 x focal + dice")
    parser.add_argument("--model-type", default=None, help="model type of --checkpoint (default: from its tensors)")
    parser.add_argument("--images", type=int, default=None, help=f"synthetic images per part (default {DEFAULT.images})")
    parser.add_argument("--steps", type=int, default=None, help=f"LoRA and full steps (default {DEFAULT.steps})")
    parser.add_argument("--base-steps", type=int, default=None,
                        help=f"steps of the tiny base model (default {DEFAULT.base_steps})")
    parser.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help=f"training resolution (default {DEFAULT.image_size[0]} {DEFAULT.image_size[1]})")
    parser.add_argument("--seed", type=int, default=None, help="seed of data, models and sampling (default 0)")
    parser.add_argument("--quick", action="store_true", help="a much smaller run with the same stages (tests)")


def run(args: argparse.Namespace) -> int:
    config = QUICK if args.quick else DEFAULT
    overrides = {"images": args.images, "steps": args.steps, "base_steps": args.base_steps, "seed": args.seed,
                 "image_size": tuple(args.image_size) if args.image_size else None}
    if args.checkpoint:  # a pretrained SAM: the project's default resolution and SAM's 20:1 focal / dice loss
        config = replace(config, image_size=DEFAULT_IMAGE_SIZE, focal_weight=20.0)
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    try:
        record = run_demo(args.out, config, checkpoint=args.checkpoint, model_type=args.model_type)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"lora-sam demo: error: {err}", file=sys.stderr)
        return 2
    m = record["metrics"]
    print(f"\nlora-sam demo: done in {record['times_s']['total'] / 60:.1f} min; report: {record['report']}")
    for name, values in m.items():
        if values:
            print(f"  {name:>14}: mIoU@1 {values['miou@1']:.3f}  mIoU@3 {values['miou@3']:.3f}  "
                  f"NoC@90 {values['noc@90']:.2f}  box mIoU {values['box_miou']:.3f}")
    lora, base = m["lora"]["miou@1"], m["base"]["miou@1"]
    verdict = "beats" if lora > base else "does NOT beat"
    print(f"  LoRA {verdict} its step-0 model (the base) on 1-click mIoU: {lora:.4f} vs {base:.4f}.")
    return 0
