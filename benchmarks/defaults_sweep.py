"""The sweep behind the built-in base's fine-tuning defaults (its model card's ``fine_tune_defaults``).

    python benchmarks/defaults_sweep.py --out runs/sweep        # about 15 min on 2 cores
    python benchmarks/defaults_sweep.py --model-type sam2.1_mini --out runs/sweep_sam2   # the SAM 2.1 base, 224x224

The seed's line, ``LoRASAM(4, 1, model_type="tiny")`` (the built-in base, alpha 1) and ``get_loaders`` at
the default 160x256, trained ``--steps`` steps through ``pl.Trainer`` on ``lora-sam synth --domain
microscopy`` images (a domain the base never saw), each setting from the same seed; val mIoU (the first
prompt's chosen output, the module's ``val/miou``) before and after. Then full fine-tuning at a few
learning rates, and the chosen LoRA setting on the base's own ``scenes`` domain (it must not fall below
the base there). Writes OUT/sweep.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from lora_sam import LoRASAM, get_loaders
from lora_sam.data.synth import make_synthetic
from lora_sam.io import markdown_table
from lora_sam.models.families import data_frame
from lora_sam.runs.callbacks import quiet_framework

LORA = [{"lr": lr, "focal_weight": focal} for focal in (20.0, 0.0) for lr in (1e-4, 5e-4, 1e-3, 2e-3, 4e-3)]
FULL = [{"finetune": "full", "lr": lr, "focal_weight": 0.0} for lr in (1e-4, 3e-4, 1e-3)]


def _val_miou(trainer: pl.Trainer, model: LoRASAM, val: Any) -> float:
    return float(trainer.validate(model, val, verbose=False)[0]["val/miou"])


def run(data: Path, options: dict[str, Any], steps: int, seed: int, model_type: str = "tiny") -> dict[str, Any]:
    pl.seed_everything(seed, verbose=False)
    options = {"warmup_steps": 10, **options}
    size, frame = data_frame(model_type, None)  # the family's default frame: 160x256 padded, or 224x224 square
    model = LoRASAM(4, 1, model_type=model_type, checkpoint="builtin", seed=seed, image_size=size, **options)
    train, val = get_loaders(data, num_workers=0, val_fraction=0.2, seed=seed, image_size=size, frame=frame)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                         default_root_dir=data.parent / "trainer",  # where LoRASAM writes its adapter: not the cwd
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1.0,
                         val_check_interval=steps, check_val_every_n_epoch=None, num_sanity_val_steps=0)
    before = _val_miou(trainer, model, val)
    start = time.perf_counter()
    trainer.fit(model, train, val)
    return {**options, "before": before, "after": float(trainer.callback_metrics["val/miou"]),
            "seconds": round(time.perf_counter() - start, 1)}


def write_card(results: dict[str, Any], args: argparse.Namespace) -> None:
    """The best LoRA setting (lr and focal weight) and the best full learning rate into the model card."""
    from lora_sam.runs.model_card import set_fine_tune_defaults

    lora = max(results["lora"], key=lambda r: r["after"])
    full = max(results["full"], key=lambda r: r["after"])
    defaults = {"lr": {"lora": lora["lr"], "full": full["lr"]}, "warmup_steps": lora["warmup_steps"],
                "focal_weight": lora["focal_weight"], "dice_weight": 1.0, "iou_weight": 1.0}
    command = f"python benchmarks/defaults_sweep.py --out {args.out} --images {args.images} --steps {args.steps}"
    if args.model_type != "tiny":
        command = command.replace("--out", f"--model-type {args.model_type} --out")
    set_fine_tune_defaults(defaults, measured_by=command, model_type=args.model_type)
    print(json.dumps(defaults))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"))
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-type", default="tiny", help="the built-in base to sweep: tiny or sam2.1_mini")
    parser.add_argument("--only", choices=["lora", "full", "source"], default=None)
    parser.add_argument("--write-card", action="store_true",
                        help="record the best LoRA and full settings in the built-in base's model card")
    args = parser.parse_args()
    if args.write_card:
        write_card(json.loads((args.out / "sweep.json").read_text()), args)
        return
    quiet_framework()
    roots = {"microscopy": args.out / "microscopy", "scenes": args.out / "scenes"}
    for domain, root in roots.items():
        if not root.is_dir():
            make_synthetic(root, args.images, seed=7000 + len(domain), domain=domain)
    result_path = args.out / "sweep.json"
    results = json.loads(result_path.read_text()) if result_path.is_file() else {}
    plans = {"lora": (roots["microscopy"], LORA), "full": (roots["microscopy"], FULL)}
    for name, (root, settings) in plans.items():
        if args.only not in (None, name):
            continue
        results[name] = []
        for options in settings:
            results[name].append(run(root, options, args.steps, args.seed, args.model_type))
            print(json.dumps(results[name][-1]), flush=True)
            result_path.write_text(json.dumps(results, indent=1))
    if args.only in (None, "source"):
        best = max(results["lora"], key=lambda r: r["after"])
        chosen = {k: best[k] for k in ("lr", "focal_weight")}
        results["source"] = [run(roots["scenes"], chosen, args.steps, args.seed, args.model_type)]
        result_path.write_text(json.dumps(results, indent=1))
    rows = [[name, f"{r['lr']:g}", f"{r['focal_weight']:g}", f"{r['before']:.3f}", f"{r['after']:.3f}",
             f"{r['after'] - r['before']:+.3f}", f"{r['seconds']:.0f}"]
            for name, runs in results.items() for r in runs]
    print(markdown_table(["run", "lr", "focal", "val mIoU before", "after", "gain", "s"], rows))


if __name__ == "__main__":
    main()
