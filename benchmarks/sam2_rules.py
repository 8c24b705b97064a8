"""SAM 2.1 by Meta's rules: the training side that transfers best to 1024 px, and what LoRA does to the object score.

    python benchmarks/sam2_rules.py --out runs/sam2_rules            # about 40 min on 2 cores

LoRA runs of the built-in ``sam2.1_mini`` on the synthetic microscopy domain (the target domain of
``benchmarks/quality.py``, the same images), each by SAM 2.1's rules (Meta's training config), the same data, seed,
steps and learning rate:

- ``lora224``: trained at 224x224 (Hiera-t's last two stages are one window each there: their windowed blocks attend
  globally), ``lora448``: trained at 448x448 (closer to 1024 px's windows); both merged into the base and scored by
  ``SAM2ImagePredictor`` at 1024 px, as deployed;
- ``lora224_head_frozen``: at 224 with the object-score head frozen and no object-score loss (how SAM 2.1 trained
  before its rules): the drift of the object score under LoRA when nothing trains it.

The object score of every model on held-out prompts (each target's most interior point, and its box) at 1024 px:
its mean logit and the share above 0 (Meta's video predictor empties a mask whose score is <= 0). Writes
``OUT/sam2_rules.json`` and ``OUT/sam2_rules.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from lora_sam import LoRASAM, get_loaders
from lora_sam.data.loaders import open_dataset, split_indices
from lora_sam.data.synth import make_synthetic
from lora_sam.evaluation.options import EvalModels, EvalOptions
from lora_sam.evaluation.run import evaluate_models
from lora_sam.io import markdown_table
from lora_sam.lora.adapter import apply_adapter
from lora_sam.models import families
from lora_sam.models.checkpoints import resolve_checkpoint
from lora_sam.models.sam2_1.config import LAYER_PRESETS
from lora_sam.settings import to_dict
from lora_sam.training.prompts import click_points, masks_to_boxes

MINI = "sam2.1_mini"
RUNS: dict[str, dict[str, Any]] = {
    "lora224": {"side": 224},
    "lora448": {"side": 448},
    "lora224_head_frozen": {"side": 224, "object_weight": 0.0, "layers": LAYER_PRESETS["keep_object_score"]},
}


def _train(name: str, data: Path, out: Path, base: str, args: argparse.Namespace) -> dict[str, Any]:
    spec = RUNS[name]
    side = spec["side"]
    torch.manual_seed(args.seed)
    module = LoRASAM(args.rank, args.alpha, model_type=MINI, checkpoint=base, image_size=(side, side),
                     masks_per_image=args.masks, focal_weight=0.0, lr=args.lr, warmup_steps=10, seed=args.seed,
                     layers=spec.get("layers", "default"), object_weight=spec.get("object_weight"))
    train, _ = get_loaders(data, image_size=(side, side), frame="square", batch_size=args.batch_size,
                           val_fraction=args.val_fraction, num_workers=0, masks_per_image=args.masks, seed=args.seed)
    trainer = pl.Trainer(max_steps=args.steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         default_root_dir=out / name,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    start = time.perf_counter()
    trainer.fit(module, train)
    seconds = time.perf_counter() - start
    return {"adapter": str(module.export_weights(out / f"{name}.safetensors")), "train_s": seconds,
            "side": side, "recipe": to_dict(module.recipe)}


def _object_scores(data: Path, base: str, adapter: str | None, args: argparse.Namespace) -> dict[str, float]:
    """Object-score logits at 1024 px on the held-out split: a point at each target's most interior pixel, and its
    box."""
    torch.manual_seed(0)
    model = families.build(MINI, base, (1024, 1024))
    if adapter:
        apply_adapter(model.module, adapter)
    model.module.eval()
    dataset = open_dataset(data, image_size=(1024, 1024), frame="square")
    _, val = split_indices([dataset.image_id(i) for i in range(len(dataset))], args.val_fraction)
    points, boxes = [], []
    with torch.no_grad():
        for i in val[: args.score_images]:
            sample = dataset[i]
            masks = sample["masks"][: args.masks_per_image].bool()
            if len(masks) == 0:
                continue
            embedding = model.encode(sample["image"][None].float())
            xy, _ = click_points(torch.zeros_like(masks), masks)
            points.append(model.decode(embedding, points=xy[:, None].float(), labels=torch.ones(len(xy), 1),
                                       multimask=True, object_score=True)[2].flatten())
            boxes.append(model.decode(embedding, boxes=masks_to_boxes(masks).float(), multimask=False,
                                      object_score=True)[2].flatten())
    out = {}
    for kind, values in (("point", torch.cat(points)), ("box", torch.cat(boxes))):
        out[f"{kind}_mean_logit"] = float(values.mean())
        out[f"{kind}_share_positive"] = float((values > 0).float().mean())
    out["prompts"] = int(sum(len(p) for p in points))
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else out / "data" / "target"
    if len(list(data.glob("sa_*.json"))) < args.images:
        make_synthetic(data, args.images, seed=9002, long_side=640, domain="microscopy", progress=True)
    base = str(resolve_checkpoint(MINI, None if args.base == "builtin" else args.base))
    runs = {name: _train(name, data, out, base, args) for name in args.runs}
    models = EvalModels(MINI, base, (224, 224), tuple(r["adapter"] for r in runs.values()), (), original=True)
    options = EvalOptions(split="val", val_fraction=args.val_fraction, masks_per_image=args.masks_per_image,
                          max_clicks=5, seed=args.seed)
    report = evaluate_models(data, out / "eval", models, options, progress=False)["models"]
    scores = {"base": _object_scores(data, base, None, args)}
    if args.previous_base:  # the base before its object-score head trained
        scores["previous base"] = _object_scores(data, args.previous_base, None, args)
    scores.update({name: _object_scores(data, base, r["adapter"], args) for name, r in runs.items()})
    record = {"settings": vars(args), "base": base, "runs": runs, "object_scores": scores,
              "metrics": {name: entry["metrics"] for name, entry in report.items()}}
    (out / "sam2_rules.json").write_text(json.dumps(record, indent=1, default=float))
    (out / "sam2_rules.md").write_text(markdown(record))
    return record


def markdown(record: dict[str, Any]) -> str:
    keys = ("miou@1", "miou@3", "box_miou_single", "noc@85")
    rows = [[name] + [f"{m.get(k, float('nan')):.3f}" for k in keys] for name, m in record["metrics"].items()]
    lines = ["## Held-out microscopy (LoRA merged at 1024 px: the `@1024` rows)", "",
             markdown_table(["model", *keys], rows), "", "## Object score at 1024 px (held-out prompts)", ""]
    score_keys = ("point_mean_logit", "point_share_positive", "box_mean_logit", "box_share_positive")
    rows = [[name] + [f"{s[k]:.3f}" for k in score_keys] for name, s in record["object_scores"].items()]
    lines += [markdown_table(["model", *score_keys], rows), ""]
    rows = [[name, str(r["side"]), f"{r['train_s']:.0f}"] for name, r in record["runs"].items()]
    lines += ["## Training", "", markdown_table(["run", "side", "seconds"], rows), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/sam2_rules")
    parser.add_argument("--data", default=None, help="microscopy data (default: made under OUT, quality.py's seed)")
    parser.add_argument("--base", default="builtin")
    parser.add_argument("--previous-base", default=None, help="a base file whose object scores to add (no training)")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--masks", type=int, default=12, help="targets per image in training")
    parser.add_argument("--masks-per-image", type=int, default=8, help="evaluated targets per image")
    parser.add_argument("--score-images", type=int, default=20, help="held-out images of the object-score table")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--alpha", type=float, default=4.0)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    record = run(parser.parse_args())
    print(markdown(record))


if __name__ == "__main__":
    main()
