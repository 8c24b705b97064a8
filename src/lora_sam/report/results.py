"""Sections 5 to 8 of the report: interactive iterations, loss curves, metrics, good and bad examples."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from lora_sam.io import markdown_table
from lora_sam.models.families import family_of
from lora_sam.report.numbers import discussion, loss_curves, mean_by_area, pick_examples, read_metrics_csv
from lora_sam.report.overview import overview_figure
from lora_sam.report.run_folder import Missing, Run, find_samples, first_click_masks
from lora_sam.training.metrics import mask_iou

__all__ = ["curves_section", "examples_section", "iterations_section", "metrics_section"]

_TERM_TITLES = {"focal": "focal", "dice": "dice", "iou": "IoU head (MSE)", "total": "total (weighted sum)"}


def iterations_section(run: Run, *, targets: int = 3) -> str:
    """5. The points sampled at each interactive iteration and the GT masks assigned, for a few targets, from
    the records the LoRA run wrote at the end of training (``lora/iterations.pt``, ``runs.records``)."""
    from lora_sam.report.figures import plot_interactive_rounds

    path = run.need("lora/iterations.pt")
    data = torch.load(path, map_location="cpu", weights_only=True)
    rounds, image = data["rounds"], data["image"]
    areas = rounds[0]["target"].flatten(1).sum(1)
    order = torch.argsort(areas, descending=True).tolist()
    picks = sorted({order[round(i * (len(order) - 1) / max(targets - 1, 1))] for i in range(min(targets, len(order)))},
                   key=order.index)
    text = [
        f"Training runs {data['iterations']} iterations per point prompt (box prompts "
        f"{data.get('box_iterations') or 1}). Iteration 1: one positive point uniform over the target, answered by the "
        "3 multimask outputs, "
        + ("the one of lowest loss trained against the target (SAM 2.1's rule). "
           if data["pairing"].get("pairing") == "min" else
           "trained against the 3 GT masks of `point_sample` (the target always among them). ")
        + "Each later iteration adds one point drawn uniformly from "
        "the error region of the previous prediction (positive in a false negative, negative in a false positive) "
        "and feeds that prediction's low-resolution logits back as the mask prompt; with several points and a "
        "mask prompt SAM answers with its single-mask output, trained against the target itself. The figures "
        f"replay this with the trained LoRA model on the first validation image `{data['image_id']}` (prompt "
        "sampler seed 0), recorded at the end of training (`lora/iterations.pt`). Left: every point so far (green "
        "positive, red negative, the new one ringed in yellow), the target's outline (white, dashed) and the chosen "
        "mask (orange); then the GT masks of that iteration, largest first (3 at iteration 1, the target after).",
        "",
        *_pairing_lines(data["pairing"]),
    ]
    for n, j in enumerate(picks, start=1):
        steps = [{k: r[k][j] for k in ("points", "labels", "gt", "pred", "target", "paired")} for r in rounds]
        ious = [float(mask_iou(s["pred"], s["target"])) for s in steps]
        labels = steps[-1]["labels"].tolist()
        learned = ", ".join(f"output {m + 1} -> {_RANKS[int(g)]}" for m, g in enumerate(rounds[0]["paired"][j]))
        figure = plot_interactive_rounds(image, steps, run.figures / f"iterations_{n}.png",
                                         title=f"target {n}: {int(areas[j])} px")
        text += [f"Target {n} ({int(areas[j])} px): {labels.count(1)} positive and {labels.count(0)} negative points "
                 f"after {len(steps)} iterations; IoU of the chosen mask with the target per iteration: "
                 + " -> ".join(f"{v:.2f}" for v in ious) + f"; at iteration 1 {learned}.", "",
                 f"![iterations, target {n}](figures/{figure.name})", ""]
    return "\n".join(text).rstrip()


def _pairing_lines(pairing: dict[str, Any]) -> list[str]:
    """The pairing table: which GT mask (whole, part, sub-part) each of the 3 outputs trained against at its
    first decode (``runs.records.pairing_counts``)."""
    seen = pairing["seen"]
    if not seen:
        return []
    counts = pairing["counts"]
    rows = [[f"output {m + 1}", *(f"{int(c)} ({100 * c / seen:.0f} %)" for c in counts[m])] for m in range(3)]
    return [f"Pairing of the 3 outputs with the 3 GT masks (`pairing={pairing['pairing']}`): the GT each output "
            f"trained against at its first decode, over {seen} point and box prompts of {pairing['images']} "
            "validation images. The released SAM emits subpart, part, whole; a fixed big-to-small pairing would force "
            "every token to swap roles, the lowest-loss assignment lets each keep its own. Where fewer than 3 distinct "
            "masks fit the prompt (a repeated GT), `distinct` pairing gives each distinct mask to one output and "
            "leaves the others without a mask loss (last column: they train their IoU prediction only).", "",
            markdown_table(["", *(f"GT {r}" for r in _RANKS), "no mask loss"], rows), ""]


_COLUMNS = ("original", "lora", "deployed")  # the example figures' model columns, after the GT
_RANKS = ("whole", "part", "sub-part")  # the 3 GT masks of point_sample / box_sample, big to small


def curves_section(run: Run) -> str:
    """6. Train and val curves of each loss term and their sum, and the train loss of each iteration."""
    from lora_sam.report.figures import plot_curves

    names = {"lora": "LoRA", "full": "full"}
    curves, weights = {}, {}
    for mode in names:
        curves[mode] = loss_curves(read_metrics_csv(run.need(f"{mode}/metrics.csv")))
        try:
            o = run.recipe_options(mode)
            weights[mode] = o.loss_weights()
        except Missing:
            weights[mode] = None
    panels = {title: {f"{names[m]} {split}": curves[m][split][term] for m in names
                      for split in ("train", "val") if term in curves[m][split]}
              for term, title in _TERM_TITLES.items()}
    main = plot_curves(panels, run.figures / "loss_curves.png",
                       title="loss terms, train (moving average of steps) and val (each validation)")
    per_iteration = {names[m]: {f"iteration {n}": s for n, s in curves[m]["iterations"].items()} for m in names}
    its = plot_curves(per_iteration, run.figures / "loss_iterations.png", title="train loss per interactive iteration")
    rows = []
    for mode, label in names.items():
        for term in _TERM_TITLES:
            train, val = curves[mode]["train"].get(term), curves[mode]["val"].get(term)
            rows.append([label, term,
                         *(f"{s[1][0]:.4f} -> {s[1][-1]:.4f}" if s is not None and len(s[1]) else "not logged"
                           for s in (train, val))])
    w = weights.get("lora")
    text = [
        "Logged by `LoRASAM` every step (train, `train/<term>_step`) and at each validation (val, `val/<term>`), "
        "written by Lightning's CSVLogger to `lora/metrics.csv` and `full/metrics.csv`. "
        + (f"Total = {w[0]:g} x focal + {w[1]:g} x dice + {w[2]:g} x IoU-head MSE. " if w else "")
        + "Train curves are moving averages over about 1/20 of the steps.",
        "",
        f"![loss curves](figures/{main.name})",
        "",
        markdown_table(["run", "term", "train (smoothed), first -> last", "val, first -> last"], rows, "llrr"),
        "",
        "Per interactive iteration (iteration 1 includes the box prompts; later ones are point prompts with more "
        "clicks and the previous mask as prompt):",
        "",
        f"![loss per iteration](figures/{its.name})",
    ]
    return "\n".join(text)


def metrics_section(run: Run) -> str:
    """7. Which metrics fit SAM and why, and the measured table (eval.json)."""
    from lora_sam.training.metrics import metric_rows

    report = run.eval
    s, models = report["settings"], report["models"]
    first = next(iter(models.values()))
    text = [
        "SAM has no categories and never segments without a prompt: every mask answers one prompt. Detection and "
        "instance segmentation metrics such as COCO mAP rank scored, class-labelled detections over a whole image "
        "and need confidences to sweep precision-recall; here there is nothing to detect, no class to match and "
        "exactly one answer per prompt, so mAP would measure the prompt sampler, not the model. What fits is the "
        "interactive-segmentation protocol (used by SAM's paper and the click-based literature):",
        "",
        "- **mIoU@k**: mean IoU with the target after k simulated clicks (k = 1, 2, 3, 5, 9). Click 1 is the most "
        "interior point of the target; each later click goes to the centre of the largest error region. mIoU@1 is "
        "the single-point quality that SAM's ambiguity-aware outputs are about.",
        f"- **NoC@85 / NoC@90**: clicks needed to reach IoU 0.85 / 0.90 within a budget (a failure costs the whole "
        f"budget, here {s['max_clicks']} clicks): the user's effort, the standard interactive-segmentation score. "
        f"mIoU@k for k above the budget repeats the last click's value.",
        "- **box mIoU**: IoU from the exact GT box as prompt (SAM's other prompt type).",
        "- **oracle mIoU@1**: the best of the 3 first-click outputs, i.e. the quality if the IoU head chose perfectly.",
        "- **IoU-head error**: mean |predicted IoU - true IoU| over the 3 first-click outputs; the head picks the "
        "mask SAM returns, so its calibration matters.",
        "",
        f"Measured on `{s['data']}` ({s['split']} split), {first['images']} images, {first['prompt_count']} target "
        f"masks, the same targets and prompts for every model; masks compared at the training resolution "
        f"{s['image_size'][0]}x{s['image_size'][1]}; after click 1, {s['refine']} output; at most {s['max_clicks']} "
        f"clicks (`eval.json`, `eval.md`):",
        "",
        markdown_table(*metric_rows({name: entry["metrics"] for name, entry in models.items()})),
        "",
        markdown_table(["model", "kind", "input", "resolution", "weights"],
                 [[name, e["kind"], e["input"], f"{e['resolution'][0]}x{e['resolution'][1]}",
                   f"`{e['path']}`" if e.get("path") else "n/a"] for name, e in models.items()], "lllll"),
    ]
    return "\n".join(text)


def _first_click_masks(run: Run, adapter: str | None, prompts: dict[str, Any], picked: list[int],
                       samples: dict[str, dict[str, Any]]) -> dict[tuple[str, int], torch.Tensor]:
    """The LoRA model's, the base's 1024 px pipeline's and the LoRA model's merged into the base at 1024 px
    (as deployed) answer (highest predicted IoU of 3) to the first click of each picked prompt:
    {("lora" | "original" | "deployed", prompt index): (H, W) bool}. One image encoding per image and model."""
    from lora_sam.evaluation.options import EvalModels
    from lora_sam.evaluation.run import build_segmenters

    models = EvalModels(run.model_type, run.base_checkpoint, run.image_size,
                        adapters=(run.locate(adapter, "lora/adapter.safetensors"),), base=False, original=True)
    built = build_segmenters(models, device=run.device)
    segmenters = {"lora": next(seg for seg, info in built.values() if info["kind"] == "lora"),
                  "original": built["original-1024"][0],
                  "deployed": next(seg for seg, info in built.values() if info["kind"] == "deployed")}  # the LoRA
    by_image: dict[str, list[int]] = {}
    for i in picked:
        by_image.setdefault(prompts["image_id"][i], []).append(i)
    out = {}
    for image_id, rows in by_image.items():
        if image_id not in samples:
            raise Missing(f"image `{image_id}` of eval.json in `{run.eval['settings']['data']}`")
        for key, segmenter in segmenters.items():
            masks = first_click_masks(segmenter, samples[image_id], prompts, rows)
            out.update({(key, i): mask for i, mask in zip(rows, masks)})
    return out


def _example_rows(run: Run, tag: str, picked: list[int], prompts: dict[str, Any],
                  samples: dict[str, dict[str, Any]], masks: dict[tuple[str, int], torch.Tensor],
                  recorded: dict[str, list[list[float]]]) -> list[dict[str, Any]]:
    """One figure row per picked prompt: the image cropped to its input size, the first click, GT, the base's
    1024 px pipeline's, LoRA's and LoRA merged at 1024 px masks with their IoUs (warning when they differ from
    eval.json's)."""
    rows = []
    for rank, i in enumerate(picked, start=1):
        sample = samples[prompts["image_id"][i]]
        gt = sample["masks"][int(prompts["mask_index"][i])].bool()
        shown, ious = [gt], []
        for key in _COLUMNS:
            shown.append(masks[key, i])
            ious.append(float(mask_iou(masks[key, i], gt)))
            if key in recorded and abs(ious[-1] - recorded[key][i][0]) > 1e-3:
                warnings.warn(f"{run.root / 'eval.json'}: prompt {i} ({key}): 1-click IoU {recorded[key][i][0]:.4f} "
                              f"recorded, {ious[-1]:.4f} recomputed for the figure", RuntimeWarning, stacklevel=3)
        ih, iw = (int(v) for v in sample["input_size"])
        rows.append({"image": sample["image"][:, :ih, :iw], "points": prompts["click_points"][i][:1],
                     "labels": prompts["click_labels"][i][:1], "masks": [m[:ih, :iw] for m in shown],
                     "label": f"{tag} #{rank}: {sample['image_id']}, mask {prompts['mask_index'][i]}",
                     "captions": [f"{int(gt.sum())} px", *(f"IoU {v:.2f}" for v in ious)]})
    return rows


def _overview(run: Run) -> list[str]:
    """The examples' first paragraph: every target of one held-out image, base vs LoRA (none without a base row)."""
    try:
        overview, sentence = overview_figure(run)
    except Missing:
        return []
    return [sentence, "", f"![{overview.stem}](figures/{overview.name})", ""]


def examples_section(run: Run, *, count: int = 3) -> str:
    """8. Good and bad examples by the LoRA model's 1-click IoU, beside the 1024 px pipeline, and a discussion."""
    from lora_sam.report.figures import plot_examples

    lora, orig = run.eval_model("lora"), run.eval_model("original", "training image upscaled")
    if lora is None or orig is None:
        raise Missing(f"a {'LoRA' if lora is None else 'original-1024'} model in `{run.root / 'eval.json'}`")
    (lora_name, lora_entry), (orig_name, orig_entry) = lora, orig
    deployed = next(((n, e) for n, e in run.eval["models"].items() if e.get("kind") == "deployed" and e.get("of") == "lora"),
                    None)
    recorded = {key: found[1]["prompts"]["click_ious"]
                for key, found in (("lora", lora), ("original", orig), ("deployed", deployed)) if found is not None}
    prompts = lora_entry["prompts"]
    first = np.array([row[0] for row in prompts["click_ious"]], dtype=np.float64)
    best, worst = pick_examples(first, count)
    samples = find_samples(run, {prompts["image_id"][i] for i in best + worst})
    masks = _first_click_masks(run, lora_entry["path"], prompts, best + worst, samples)
    (h, w), pipeline = run.image_size, family_of(run.model_type).pipeline
    figures = []
    for tag, picked in (("good", best), ("bad", worst)):
        rows = _example_rows(run, tag, picked, prompts, samples, masks, recorded)
        if rows:
            figures.append(plot_examples(rows, ["GT", f"base, {pipeline} 1024 px", f"LoRA {h}x{w}",
                                                f"LoRA merged, {pipeline} 1024 px"],
                                         run.figures / f"examples_{tag}.png",
                                         title=f"{tag} examples: {'highest' if tag == 'good' else 'lowest'} LoRA "
                                               f"1-click IoU"))
    roles = {role: found[1]["metrics"] for role, found in
             (("base", run.eval_model("base")), ("lora", lora), ("full", run.eval_model("full")), ("original", orig),
              ("deployed", deployed)) if found is not None}
    areas = prompts["area"]
    orig_first = [row[0] for row in orig_entry["prompts"]["click_ious"]]
    by_area = {"lora": mean_by_area(first, areas), "original": mean_by_area(orig_first, areas)}
    costs = run.compare.get("runs") if (run.root / "compare.json").is_file() else None
    trained = (run.demo or {}).get("base", {})
    base_resolution = tuple(trained["image_size"]) if trained.get("source") == "trained" else None
    text = [*_overview(run),
        f"Rule: of the {len(first)} evaluation prompts, the {len(best)} with the highest and the {len(worst)} with "
        f"the lowest 1-click IoU of the LoRA model (`{lora_name}` in eval.json; ties to the earlier prompt), beside "
        f"`{orig_name}`. Each row: "
        f"the image with the first click (the target's most interior point), the GT mask, the original SAM "
        f"pipeline's answer on the base weights (`{pipeline}` at 1024 px, given the training image upscaled back to "
        f"its original size; its mask resized to the training resolution), the LoRA model's at {h}x{w}, and the LoRA "
        f"model as users deploy it (merged into the base checkpoint, `{pipeline}` at 1024 px), each the output "
        "with the highest predicted IoU.",
        "",
        *[f"![{p.stem}](figures/{p.name})" for p in figures],
        "",
        "**Discussion** (generated from the numbers above):",
        "",
        *[f"- {sentence}" for sentence in discussion(roles, costs=costs, by_area=by_area,
                                                         base_resolution=base_resolution, pipeline=pipeline)],
    ]
    full_res = run.eval_model("original", "original image")
    if full_res is not None:
        value = full_res[1]["metrics"].get("miou@1")
        if value is not None:
            text.append(f"- Given the original full-resolution image instead (`{full_res[0]}`), the 1024 px pipeline "
                        f"scores mIoU@1 {value:.3f}.")
    return "\n".join(text)
