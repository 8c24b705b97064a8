"""Ship a pretrained base: copy its weights into the package and write its model card.

    python -m lora_sam.runs.model_card runs/pretrain/run runs/quality/quality.json --pretrain "..." \
        --synth "lora-sam synth runs/pretrain/data/scenes --images 1600 --long-side 768 --seed 100 --workers 2"

Writes ``lora_sam/weights/sam_tiny_scenes.pth`` (the run's ``base.pth``, unchanged: the official
checkpoint format), ``model_card.json`` (what ``lora-sam demo`` and the report read) and
``MODEL_CARD.md`` (the same for people): the data generator and seed, resolutions, steps, time,
the recipe, the measured metrics of ``benchmarks/quality.py`` and the sha256 of the weights.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from lora_sam.io import markdown_table
from lora_sam.models.checkpoints import BUILTIN_FILES, CARD_FILES, WEIGHTS_DIR
from lora_sam.runs.pretrain import PretrainConfig, sha256

__all__ = ["card_markdown", "set_automatic_defaults", "set_fine_tune_defaults", "ship"]

_RECIPE_KEYS = ("batch_size", "masks_per_image", "iterations", "point_prob", "lr", "warmup_steps",
                "final_lr_fraction", "weight_decay", "grad_clip", "focal_weight", "dice_weight", "iou_weight", "seed")
_CARRIED = ("distilled", "fine_tune_defaults", "automatic")
"""What a card of weights pretrained further keeps from the card of the weights it started from."""


_STAGE_KEYS = ("steps", "seconds", "hours", "device", "train_images", "synth_command", "pretrain_command", "commit",
               "schedule", "recipe", "note")


def _stages(previous: dict[str, Any] | None, card: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs that made the weights, first to last: those of ``previous`` (a card) and this one."""
    earlier = [] if previous is None else previous.get("stages") or [{k: previous.get(k) for k in _STAGE_KEYS}]
    return [*earlier, {k: card.get(k) for k in _STAGE_KEYS}]


def ship(run_dir: str | Path, quality: str | Path | None, *, synth_command: str, pretrain_command: str,
         out_dir: Path = WEIGHTS_DIR, commit: str | None = None, note: str = "",
         previous: str | Path | None = None, distilled: tuple[str | Path, str] | None = None) -> dict[str, Any]:
    """Copy ``run_dir/base.pth`` to ``out_dir`` and write the two card files; returns the card.

    ``previous``: the card of the weights this run started from (``lora-sam pretrain --init``), read
    before it is replaced; the new card lists both runs (``stages``) and counts steps, time and
    training images over all of them. ``distilled``: (``distill.json``, its command) when the run started
    from ``lora-sam distill``'s output; the card says so and counts its time.
    """
    earlier = None if previous is None else json.loads(Path(previous).read_text())
    run_dir = Path(run_dir)
    record = json.loads((run_dir / "pretrain.json").read_text())
    config = PretrainConfig.from_dict(record["config"]).flat()  # the groups' fields by name (old flat records too)
    target = Path(out_dir) / BUILTIN_FILES[config["model_type"]]
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dir / "base.pth", target)
    data = Path(record["data"])
    card: dict[str, Any] = {
        "name": target.name, "model_type": config["model_type"], "parameters": record["parameters"],
        "bytes": target.stat().st_size, "sha256": sha256(target),
        "steps": record["steps"], "seconds": record["seconds"], "hours": record["seconds"] / 3600,
        "device": f"{record['threads']} CPU threads ({record['cpu']}), torch {record['torch']}",
        "sizes": config["sizes"], "size_weights": config["size_weights"],
        "recipe": _recipe(config),
        "train_images": len(list(data.glob("sa_*.json"))) if data.is_dir() else None,
        "synth_command": synth_command, "pretrain_command": pretrain_command, "commit": commit,
        "schedule": record.get("schedule"), "note": note,
    }
    if earlier is not None:
        card["stages"] = _stages(earlier, card)
        for key in ("steps", "seconds", "hours", "train_images"):
            card[key] = sum(stage[key] or 0 for stage in card["stages"])
        runs = len(card["stages"])
        card.update({k: {"measured_before_run": runs, **earlier[k]} if k != "distilled" else earlier[k]
                     for k in _CARRIED if k in earlier and distilled is None})
        if "distilled" in card and distilled is None:  # its time counts in the total
            card["seconds"] += card["distilled"]["seconds"]
            card["hours"] = card["seconds"] / 3600
    if distilled is not None:
        record = json.loads(Path(distilled[0]).read_text())
        card["distilled"] = {"command": distilled[1], "steps": record["steps"], "seconds": record["seconds"],
                             "relative_mse": [record["first_relative_mse"], record["last_relative_mse"]],
                             "teacher": record["config"]["teacher_type"], "sha256": record["sha256"]}
        card["stages"] = card.get("stages") or _stages(None, card)  # each run's own time; the total adds this
        card["seconds"] += record["seconds"]
        card["hours"] = card["seconds"] / 3600
    if quality:
        q = json.loads(Path(quality).read_text())
        card["metrics"] = {"source": q["source"], "target": q["target"]}
        card["targets"] = q["targets"]
    json_name, md_name = CARD_FILES[config["model_type"]]
    (target.parent / json_name).write_text(json.dumps(card, indent=1))
    (target.parent / md_name).write_text(card_markdown(card))
    return card


def set_fine_tune_defaults(defaults: dict[str, Any], *, measured_by: str, out_dir: Path = WEIGHTS_DIR,
                           model_type: str = "tiny", carried_from: str | None = None) -> dict[str, Any]:
    """Record the base's fine-tuning defaults (``checkpoints.fine_tune_defaults`` reads them) in its card.

    ``defaults``: {"lr": {"lora": float, "full": float}, "warmup_steps", "focal_weight", "dice_weight",
    "iou_weight"}; ``measured_by``: the sweep's command and where its table is; ``carried_from``: the
    model type of the base the sweep ran on, when it was another (the card says so).
    """
    return _set_card_entry(model_type, out_dir, "fine_tune_defaults", {
        **defaults, "measured_by": measured_by, **({"carried_from": carried_from} if carried_from else {})})


def _set_card_entry(model_type: str, out_dir: Path, key: str, value: dict[str, Any]) -> dict[str, Any]:
    """Set ``key`` of the built-in base's card (``.json``) and write its ``.md`` again; returns the card."""
    json_name, md_name = CARD_FILES[model_type]
    path = out_dir / json_name
    card = json.loads(path.read_text())
    card[key] = value
    path.write_text(json.dumps(card, indent=1))
    (out_dir / md_name).write_text(card_markdown(card))
    return card


def set_automatic_defaults(thresholds: dict[str, float], *, measured_on: str, command: str,
                           measured: dict[str, float] | None = None, out_dir: Path = WEIGHTS_DIR,
                           model_type: str = "tiny") -> dict[str, Any]:
    """Record the base's automatic-mask thresholds (``checkpoints.automatic_defaults`` reads them) in its card.

    ``thresholds``: {"pred_iou_thresh": float, "stability_score_thresh": float}; ``measured_on``: the images and
    the rule; ``command``: the measurement's command (``benchmarks/automatic_thresholds.py``); ``measured``:
    what it found ({"masks_per_image", "ar@100"} of the chosen pair, "unfiltered_masks_per_image",
    "unfiltered_ar@100" of the generator with both filters off, "meta_masks_per_image" of Meta's pair).
    """
    return _set_card_entry(model_type, out_dir, "automatic",
                           {**thresholds, **(measured or {}), "measured_on": measured_on, "command": command})


def _automatic_lines(card: dict[str, Any]) -> list[str]:
    a = card.get("automatic")
    if not a:
        return []
    found = (f" ({a['rule']}): {a['masks_per_image']:.1f} masks per image and AR@100 {a['ar@100']:.3f}, against "
             f"{a['unfiltered_masks_per_image']:.1f} and {a['unfiltered_ar@100']:.3f} with both filters off, and "
             f"{a['meta_masks_per_image']:.1f} masks per image with Meta's values" if "ar@100" in a else "")
    return ["## Automatic-mask thresholds", "",
            f"What `lora-sam segment-all` keeps with this base when its options do not say otherwise (and prints "
            f"so): masks of predicted IoU above {a['pred_iou_thresh']:g} and stability score at least "
            f"{a['stability_score_thresh']:g}, where Meta's values were tuned for its large models. Measured on "
            f"{a['measured_on']}{found}, by `{a['command']}` (the table: `BENCHMARKS.md`, section "
            "\"Automatic-mask thresholds of the built-in bases\")" + _before(a) + ".", ""]


def _before(entry: dict[str, Any]) -> str:
    """Where a carried entry was measured: on the weights before the last run (not measured again)."""
    run = entry.get("measured_before_run")
    return f", on the weights before run {run} (not measured again)" if run else ""


def _defaults_lines(card: dict[str, Any]) -> list[str]:
    d = card.get("fine_tune_defaults")
    if not d:
        return []
    return ["## Fine-tuning defaults", "",
            f"What `LoRASAM` takes from this base for whatever a run does not set (and prints so): lr "
            f"{d['lr']['lora']:g} with LoRA, {d['lr']['full']:g} for full fine-tuning, {d['warmup_steps']} warm-up "
            f"steps, loss {d['focal_weight']:g} x focal + {d['dice_weight']:g} x dice + {d['iou_weight']:g} x IoU-head "
            "loss (the base was pretrained without the focal term). "
            + (f"Carried over from the `{d['carried_from']}` base, pretrained the same way (dice and IoU head only) "
               "and swept by `" if d.get("carried_from") else "Measured by `")
            + d["measured_by"] + "` (the table: `BENCHMARKS.md`, section \"Fine-tuning defaults\")"
            + ("; this base was not swept itself" if d.get("carried_from") else "") + _before(d) + ".", ""]


def _made_lines(card: dict[str, Any]) -> list[str]:
    """The data and training commands of each run that made the weights."""
    stages = card.get("stages") or _stages(None, card)
    lines = []
    for number, stage in enumerate(stages, start=1):
        head = f"- Run {number} of {len(stages)}: " if len(stages) > 1 else "- "
        commit = f" (commit `{stage['commit']}`)" if stage.get("commit") else ""
        lines += [f"{head}data `{stage['synth_command']}` ({stage['train_images']} images of the `scenes` domain: "
                  "whole / part / sub-part hierarchies, occlusion, textures, touching same-colour objects, thin "
                  "shapes, SA-1B shapes);",
                  f"  training `{stage['pretrain_command']}`{commit}: {stage['steps']:,} steps in "
                  f"{stage['hours']:.2f} h on {stage['device']}, lr {stage['recipe']['lr']:g}."
                  + (f" {stage['note']}" if stage.get("note") else "")]
    return lines


_FAMILY_TEXT = {
    "sam_v1": ("SAM (the official `segment_anything` classes with small dimensions",
               "one 64x64 position table resized to each (so the file is the official 1024 px format)",
               ['sam = lora_sam.build_sam("tiny", checkpoint="builtin")        # at 160x256',
                'model = lora_sam.LoRASAM(4, 1, model_type="tiny")             # starts from it, and says so']),
    "sam2.1": ("SAM 2.1 (Meta's `sam2` classes, Hiera-t's config with small dimensions: `lora_sam.models.sam2_1.config.MINI_OVERRIDES`",
               "square frames, SAM 2's geometry (Hiera resizes its position embedding at run time; the file is "
               "Meta's format, `{\"model\": state_dict}`, which `build_sam2` loads with the same overrides)",
               ['net = lora_sam.build_sam("sam2.1_mini", checkpoint="builtin")  # SAM2Base, at 224x224',
                'model = lora_sam.LoRASAM(4, 1, model_type="sam2.1_mini")      # at 224x224; starts from it',
                "from lora_sam.models.families import build",
                'predictor = build("sam2.1_mini", "builtin", (1024, 1024)).predictor()  # SAM2ImagePredictor']),
}


def card_markdown(card: dict[str, Any]) -> str:
    from lora_sam.models.families import family_of

    r = card["recipe"]
    what, frames, use = _FAMILY_TEXT[family_of(card["model_type"]).name]
    sizes = ", ".join(f"{h}x{w} ({p:.0%} of steps)" for (h, w), p in zip(card["sizes"], card["size_weights"]))
    d = card.get("distilled")
    origin = ("pretrained from random weights by this project" if d is None else
              f"pretrained by this project from its own `{d['teacher']}` base (itself trained from random weights)")
    lines = [
        f"# Model card: `{card['name']}`", "",
        f"A `{card['model_type']}` {what}, "
        f"{card['parameters']:,} parameters) **{origin}, on its own synthetic "
        "data**. It is not Meta's SAM and was never trained on real images: it is the base that `lora-sam demo`, "
        "the learning tests and `benchmarks/quality.py` fine-tune, so that what fine-tuning does can be measured.", "",
        "## How it was made", "",
        *([] if d is None else [
            f"- Distilled first: `{d['command']}`: the `{d['teacher']}` base's prompt encoder and mask decoder "
            f"copied, then {d['steps']:,} steps ({d['seconds'] / 3600:.2f} h) training the image encoder on that "
            f"base's image embedding (relative MSE {d['relative_mse'][0]:.3f} -> {d['relative_mse'][1]:.3f}); "
            "from random weights the recipe alone never left predicting the whole frame (`BENCHMARKS.md`, "
            "\"SAM 2.1\")."]),
        *_made_lines(card),
        f"- {card['steps']:,} AdamW steps" + (f" (and {d['steps']:,} distillation steps)" if d else "")
        + f" in {card['hours']:.2f} h in all; resolutions{' of the last run' if len(card.get('stages') or ()) > 1 else ''}"
        f" {sizes}, {frames}.",
        f"- Recipe{' of the last run' if len(card.get('stages') or ()) > 1 else ''}: SAM's interactive training "
        f"(`lora_sam.training.recipe`): a point (p = {r['point_prob']}) or a noisy box, "
        + (f"then up to {r['iterations']} iterations of error-region clicks with the previous logits fed back; "
           if not r.get("object_weight") else
           f"then correction clicks with the previous logits fed back, {r['iterations']} decodes per point and "
           f"{r['box_iterations']} per box, by SAM 2.1's rules (Meta's training config: boxes on the single output, "
           f"the mask loss on the best of the 3 outputs, a share {r['gt_click_prob']:g} of the clicks from the target, "
           f"IoU head {r['iou_loss'].upper()}, object score by cross-entropy x {r['object_weight']:g}); ") +
        f"{r['batch_size']} images x {r['masks_per_image']} targets per step; loss {r['focal_weight']:g} x focal + "
        f"{r['dice_weight']:g} x dice + {r['iou_weight']:g} x IoU-head {r.get('iou_loss', 'mse').upper()}; lr {r['lr']:g}, {r['warmup_steps']} "
        f"warm-up steps, cosine to {r['final_lr_fraction']:g} x; weight decay {r['weight_decay']:g}; gradient "
        f"clipping {r['grad_clip']:g}; seed {r['seed']}.",
        f"- File: {card['bytes'] / 1e6:.1f} MB, sha256 `{card['sha256']}`.", "",
    ]
    if card.get("targets"):
        rows = [[t["target"], f"{t['value']:.3f}", t["goal"],
                 "met" if t["met"] else f"missed by {abs(t['by']):.3f}"] for t in card["targets"]]
        lines += ["## Measured (`benchmarks/quality.py`, held-out images)", "",
                  markdown_table(["target", "value", "goal", "result"], rows), "",
                  "Details and what limits each missed target: `BENCHMARKS.md`, section \"Quality\".", ""]
    lines += _defaults_lines(card)
    lines += _automatic_lines(card)
    lines += ["## Use", "", "```python", "import lora_sam", *use, "```", ""]
    return "\n".join(lines)


def _recipe(config: dict[str, Any]) -> dict[str, Any]:
    """The run's recipe settings, its rules left to the family (None) as the family's (``Family.recipe_rules``)."""
    from lora_sam.models.families import family_of
    from lora_sam.training.recipe import SAM_V1_RULES, RecipeOptions

    rules = RecipeOptions.from_mapping(config).with_rules(family_of(config["model_type"]).recipe_rules)
    return {**{k: config.get(k) for k in _RECIPE_KEYS}, **{k: getattr(rules, k) for k in SAM_V1_RULES}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="the lora-sam pretrain folder (base.pth, pretrain.json)")
    parser.add_argument("quality", nargs="?", default=None, help="quality.json of benchmarks/quality.py")
    parser.add_argument("--synth", required=True, help="the command that wrote the training data")
    parser.add_argument("--pretrain", required=True, help="the command that trained the model")
    parser.add_argument("--commit", default=None, help="the commit of the code that trained it")
    parser.add_argument("--note", default="", help="how the run went (restarts, schedule changes, threads)")
    parser.add_argument("--previous", default=None, metavar="CARD",
                        help="model_card.json of the weights the run started from (pretrain --init), to list both "
                             "runs; give a copy, since the shipped card is replaced")
    parser.add_argument("--distilled", nargs=2, default=None, metavar=("DISTILL_JSON", "COMMAND"),
                        help="the run started from lora-sam distill's output: its distill.json and its command")
    args = parser.parse_args()
    card = ship(args.run_dir, args.quality, synth_command=args.synth, pretrain_command=args.pretrain,
                commit=args.commit, note=args.note, previous=args.previous, distilled=args.distilled)
    print(f"wrote {WEIGHTS_DIR / card['name']} ({card['bytes'] / 1e6:.1f} MB) and its model card")


if __name__ == "__main__":
    main()
