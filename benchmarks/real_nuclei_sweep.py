"""One training mode of ``benchmarks/real_nuclei.py`` at one setting, scored on the held-out tile: the learning-rate
sweep behind that benchmark's and the real demo's settings.

Trains LiteMedSAM with LoRA or full fine-tuning on the three training tiles of ``lora-sam nuclei`` (``compare``'s
own training function, so the run is the one ``compare`` makes) and evaluates that model alone on the held-out
tile with the benchmark's prompts; appends one JSON line (settings, training seconds, metrics) to ``--results``.

    python benchmarks/real_nuclei_sweep.py lora --steps 60 --lr 3e-3 --masks-per-image 8     # about 7 minutes
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from lora_sam.data.nuclei import write_nuclei
from lora_sam.evaluation.options import EvalModels, EvalOptions
from lora_sam.evaluation.run import evaluate_models
from lora_sam.lora.options import LoRAOptions
from lora_sam.runs.callbacks import quiet_framework
from lora_sam.runs.compare import CompareConfig, CompareRun, _base_checkpoint, _train
from lora_sam.training.recipe import RecipeOptions

KEYS = ("box_miou_single", "miou@1", "oracle_miou@1", "miou@3", "miou@5", "noc@85", "iou_head_mae")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("lora", "full"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--masks-per-image", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path("runs/real_nuclei/dsb2018"))
    parser.add_argument("--out", type=Path, default=Path("runs/real_nuclei_sweep"))
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/real_nuclei/lr_sweep.jsonl"))
    args = parser.parse_args()
    if not (args.data / "nuclei.json").is_file():
        write_nuclei(args.data)
    name = f"{args.mode}_s{args.steps}_lr{args.lr:g}_k{args.masks_per_image}"
    out = args.out / name
    out.mkdir(parents=True, exist_ok=True)
    config = CompareConfig(model_type="lite_medsam", steps=args.steps, batch_size=1, lr_lora=args.lr, lr_full=args.lr,
                           val_every=args.steps, lora=LoRAOptions(rank=4, alpha=4.0),
                           recipe=replace(RecipeOptions(), masks_per_image=args.masks_per_image,
                                          iterations=args.iterations),
                           eval=replace(EvalOptions(), max_clicks=5))
    base_path, _ = _base_checkpoint(out, config.model_type, None, config.seed)
    run = CompareRun.resolve(config, str(args.data), base_path, progress=False, quiet=True)
    quiet_framework()
    trained = _train(args.mode, out, run)
    weights = (trained["weights_file"],)
    models = EvalModels(config.model_type, run.checkpoint, None, weights if args.mode == "lora" else (),
                        weights if args.mode == "full" else (), base=False)
    start = time.perf_counter()
    report = evaluate_models(args.data, out, models, replace(config.eval, split="val", val_fraction=config.val_fraction,
                                                             seed=config.seed), progress=False)
    metrics = next(iter(report["models"].values()))["metrics"]
    line = {"mode": args.mode, "steps": args.steps, "lr": args.lr, "masks_per_image": args.masks_per_image,
            "iterations": args.iterations, "train_s": round(trained["train_seconds"]),
            "step_s": round(trained["step_time_s"], 2), "eval_s": round(time.perf_counter() - start),
            **{k: round(metrics[k], 3) for k in KEYS}}
    print(json.dumps(line))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with args.results.open("a") as f:
        f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
