"""The automatic-mask thresholds of a built-in base (its model card's ``automatic``), measured on its own domain.

    python benchmarks/automatic_thresholds.py --model-type tiny --out runs/thresholds/tiny
    python benchmarks/automatic_thresholds.py --model-type sam2.1_mini --out runs/thresholds/sam2.1_mini
    python benchmarks/automatic_thresholds.py --model-type tiny --out runs/thresholds/tiny --write-card

Meta's generators keep a mask when its predicted IoU is above 0.88 (SAM v1; 0.8 for SAM 2.1) and its
stability score at least 0.95, values tuned for Meta's own large models; a small base's IoU head is calibrated
otherwise, and ``lora-sam segment-all`` with those values keeps nothing on images of the base's own domain.

Here the base (``checkpoint="builtin"``, merged at 1024 px as ``segment-all`` builds it) runs its family's
generator once per image with every filter off (``ALL_CANDIDATES``: a ``--points-per-side`` grid, 3 masks per
point) on ``--images`` synthetic scenes drawn with a seed the base never saw (``--seed``; the bases were
pretrained on seeds 100 and 200). Each pair of thresholds of the grid is then applied to those candidates as the
generator applies them (``lora_sam.evaluation.automatic.filter_candidates``: predicted IoU, stability, box NMS
0.7), and scored: the masks kept per image, and the proposal recall AR@100 against every GT mask
(``lora_sam.evaluation.proposals``: the top 100 by predicted IoU, recall averaged over IoU 0.5:0.95).

The rule: among the pairs whose AR@100 is at least ``1 - --tolerance`` (default 0.95) times the unfiltered
generator's (both thresholds 0, NMS kept), the one that keeps the fewest masks per image; ties go to the higher
AR@100, then to the higher thresholds. Writes OUT/thresholds.json and prints the table (Markdown).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from lora_sam.data.rle import to_pycocotools
from lora_sam.data.synth import make_synthetic
from lora_sam.evaluation.automatic import ALL_CANDIDATES, filter_candidates
from lora_sam.evaluation.proposals import ProposalRecall
from lora_sam.io import markdown_table
from lora_sam.lora.adapter import merged_sam
from lora_sam.models.families import mask_generator

PRED_IOU = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.88)
STABILITY = (0.0, 0.5, 0.7, 0.8, 0.85, 0.9, 0.92, 0.95, 0.97)
NMS = 0.7  # the generators' default box NMS, which segment-all keeps


def _decode(segmentation: dict[str, Any]) -> np.ndarray:
    return mask_utils.decode(to_pycocotools(segmentation)).astype(bool)


def candidates(model_type: str, images: list[Path], points_per_side: int,
               cache: Path) -> tuple[list[dict[str, Any]], tuple[float, float]]:
    """Per image: every candidate of the base's generator (records, (P, H, W) masks) and its GT masks; and the
    generator's own (Meta's) pair of thresholds. The records (COCO RLE) are kept in ``cache`` for a rerun."""
    network = merged_sam(None, "builtin", model_type).eval()
    meta = mask_generator(network)
    generator = mask_generator(network, points_per_side=points_per_side, output_mode="coco_rle", **ALL_CANDIDATES)
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for path in images:
        saved = cache / f"{path.stem}.json"
        if saved.is_file():
            records, seconds = json.loads(saved.read_text()), float("nan")
        else:
            image = np.array(Image.open(path).convert("RGB"))
            start = time.perf_counter()
            with torch.no_grad():
                records = generator.generate(image)
            seconds = time.perf_counter() - start
            saved.write_text(json.dumps(records))
        doc = json.loads(path.with_suffix(".json").read_text())
        gt = np.stack([_decode(a["segmentation"]) for a in doc["annotations"]])
        masks = np.stack([_decode(r["segmentation"]) for r in records])
        out.append({"records": records, "masks": masks, "gt": gt, "seconds": seconds})
        print(f"{path.name}: {len(records)} candidates, {len(gt)} GT masks, {seconds:.1f} s", flush=True)
    return out, (meta.pred_iou_thresh, meta.stability_score_thresh)


def score(per_image: list[dict[str, Any]], pred_iou: float, stability: float) -> dict[str, float]:
    """Masks kept per image and AR@100 of one pair of thresholds."""
    recall, kept_total = ProposalRecall(limits=(100,)), 0
    for item in per_image:
        kept, _ = filter_candidates(item["records"], pred_iou, stability, NMS)
        scores = [item["records"][i]["predicted_iou"] for i in kept]
        recall.update(item["masks"][kept], item["gt"], scores=scores)
        kept_total += len(kept)
    return {"pred_iou_thresh": pred_iou, "stability_score_thresh": stability,
            "masks_per_image": kept_total / len(per_image), "ar@100": recall.compute()["AR@100"]}


def choose(rows: list[dict[str, float]], tolerance: float) -> dict[str, float]:
    """The rule of the module docstring: AR@100 within ``tolerance`` of the unfiltered pair's, fewest masks."""
    reference = next(r for r in rows if r["pred_iou_thresh"] == 0 and r["stability_score_thresh"] == 0)
    eligible = [r for r in rows if r["ar@100"] >= (1 - tolerance) * reference["ar@100"]]
    return min(eligible, key=lambda r: (r["masks_per_image"], -r["ar@100"], -r["pred_iou_thresh"],
                                        -r["stability_score_thresh"]))


def table(rows: list[dict[str, float]], chosen: dict[str, float], meta: tuple[float, float]) -> str:
    """Masks kept per image / AR@100, a row per predicted-IoU threshold and a column per stability threshold;
    the chosen pair in bold, Meta's in italics, the unfiltered generator's is the top left cell."""
    cells: dict[tuple[float, float], str] = {}
    for r in rows:
        pair = (r["pred_iou_thresh"], r["stability_score_thresh"])
        text = f"{r['masks_per_image']:.1f} / {r['ar@100']:.3f}"
        cells[pair] = f"**{text}**" if r is chosen else f"*{text}*" if pair == meta else text
    iou = sorted({p for p, _ in cells})
    stability = sorted({s for _, s in cells})
    return markdown_table(["pred IoU > (row), stability >= (column)", *[f"{s:g}" for s in stability]],
                          [[f"{p:g}", *[cells[(p, s)] for s in stability]] for p in iou])


def write_card(result: dict[str, Any], command: str) -> None:
    from lora_sam.runs.model_card import set_automatic_defaults

    rows, chosen = result["rows"], result["chosen"]
    unfiltered = next(r for r in rows if r["pred_iou_thresh"] == 0 and r["stability_score_thresh"] == 0)
    meta = next(r for r in rows if [r["pred_iou_thresh"], r["stability_score_thresh"]] == list(result["meta"]))
    measured = {"rule": result["rule"], "masks_per_image": round(chosen["masks_per_image"], 2), "ar@100": round(chosen["ar@100"], 4),
                "unfiltered_masks_per_image": round(unfiltered["masks_per_image"], 2),
                "unfiltered_ar@100": round(unfiltered["ar@100"], 4),
                "meta_masks_per_image": round(meta["masks_per_image"], 2)}
    set_automatic_defaults({k: chosen[k] for k in ("pred_iou_thresh", "stability_score_thresh")},
                           measured_on=result["measured_on"], command=command, measured=measured,
                           model_type=result["model_type"])
    print(json.dumps({k: chosen[k] for k in ("pred_iou_thresh", "stability_score_thresh")} | measured))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-type", default="tiny", help="the built-in base: tiny or sam2.1_mini (default tiny)")
    parser.add_argument("--out", type=Path, default=Path("runs/thresholds"), help="folder for the data and the JSON")
    parser.add_argument("--images", type=int, default=8, help="held-out synthetic scenes (default 8)")
    parser.add_argument("--seed", type=int, default=77, help="their seed, one the base never saw (default 77)")
    parser.add_argument("--long-side", type=int, default=384, help="their longest side in pixels (default 384)")
    parser.add_argument("--points-per-side", type=int, default=16, help="the generator's grid (default 16)")
    parser.add_argument("--tolerance", type=float, default=0.05,
                        help="AR@100 may fall this share below the unfiltered generator's (default 0.05)")
    parser.add_argument("--write-card", action="store_true",
                        help="record the chosen pair of OUT/thresholds.json in the built-in base's model card")
    args = parser.parse_args()
    command = (f"python benchmarks/automatic_thresholds.py --model-type {args.model_type} --out {args.out} "
               f"--images {args.images} --seed {args.seed} --long-side {args.long_side} "
               f"--points-per-side {args.points_per_side} --tolerance {args.tolerance:g}")
    if args.write_card:
        write_card(json.loads((args.out / "thresholds.json").read_text()), command)
        return
    torch.manual_seed(0)
    images = make_synthetic(args.out / "data", args.images, seed=args.seed, domain="scenes", long_side=args.long_side)
    cache = args.out / f"candidates_{args.points_per_side}"
    per_image, meta = candidates(args.model_type, images, args.points_per_side, cache)
    timed = [i["seconds"] for i in per_image if not np.isnan(i["seconds"])]  # not the candidates read from the cache
    rows = [score(per_image, p, s) for p in PRED_IOU for s in STABILITY]
    chosen = choose(rows, args.tolerance)
    result = {"model_type": args.model_type, "command": command, "rows": rows, "chosen": chosen, "meta": meta,
              "candidates_per_image": float(np.mean([len(i["records"]) for i in per_image])),
              "gt_per_image": float(np.mean([len(i["gt"]) for i in per_image])),
              "seconds_per_image": float(np.mean(timed)) if timed else None,
              "measured_on": f"{args.images} held-out synthetic scenes (make_synthetic seed {args.seed}, long side "
                             f"{args.long_side}), {args.points_per_side}x{args.points_per_side} points",
              "rule": f"the fewest masks per image of the pairs whose AR@100 is at least {1 - args.tolerance:.0%} of "
                      f"the unfiltered generator's"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "thresholds.json").write_text(json.dumps(result, indent=1))
    print(table(rows, chosen, meta))
    print(f"chosen: pred_iou_thresh {chosen['pred_iou_thresh']:g}, stability_score_thresh "
          f"{chosen['stability_score_thresh']:g} ({chosen['masks_per_image']:.1f} masks per image, AR@100 "
          f"{chosen['ar@100']:.3f}); {result['candidates_per_image']:.0f} candidates and {result['gt_per_image']:.1f} "
          f"GT masks per image" + (f", {result['seconds_per_image']:.1f} s per image" if timed else ""))


if __name__ == "__main__":
    main()
