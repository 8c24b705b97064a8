"""Sections 1 to 4 of the report: how LoRA is implemented, the parameters it trains, what LoRA and full
fine-tuning each cost and give, and how the 3 ground-truth masks of a prompt are assigned.

Each section takes a ``Run`` and returns Markdown; a file it needs that is absent raises ``Missing``.
Sections 5 to 8 are in ``lora_sam.report.results``.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from lora_sam.io import markdown_table
from lora_sam.models.families import family_of
from lora_sam.report.numbers import cost_note, cost_table
from lora_sam.report.run_folder import Missing, Run
from lora_sam.training.metrics import metric_rows

__all__ = ["compare_section", "lora_section", "parameters_section", "targets_section"]

_TYPES = {(2, 2): "Linear", (4, 2): "Conv2d", (2, 4): "ConvTranspose2d"}


def _pattern(name: str) -> str:
    """Layer name with block indices as ``*`` and attention projections merged: ``blocks.*.attn.qkv``."""
    name = re.sub(r"\.\d+(?=\.|$)", ".*", name)
    return re.sub(r"\.(q|k|v|out)_proj$", ".{q,k,v,out}_proj", name)


def lora_section(run: Run) -> str:
    """1. How LoRA is implemented, and the wrapped layers of this run's adapter by part and type."""
    from lora_sam.lora.adapter import read_adapter_info

    adapter = run.weights("lora")
    info = read_adapter_info(adapter)
    tensors = load_file(str(adapter))
    groups: Counter[tuple[str, str, str]] = Counter()
    params: Counter[tuple[str, str, str]] = Counter()
    for layer in info.layers:
        a, b = tensors[f"{layer}.lora_A"], tensors[f"{layer}.lora_B"]
        key = (layer.split(".")[0], _pattern(layer), _TYPES.get((a.dim(), b.dim()), "?"))
        groups[key] += 1
        params[key] += a.numel() + b.numel()
    wrapped = set(info.layers)
    frozen: Counter[tuple[str, str, str]] = Counter(
        (name.split(".")[0], _pattern(name), type(module).__name__)
        for name, module in run.plain_model.named_modules()
        if type(module) in (nn.Linear, nn.Conv2d, nn.ConvTranspose2d) and name not in wrapped
    )
    rows = [[part, f"`{pattern}`", kind, count, f"{params[(part, pattern, kind)]:,}"]
            for (part, pattern, kind), count in sorted(groups.items())]
    rows.append(["**total**", "", "", len(info.layers), f"{sum(params.values()):,}"])
    frozen_rows = [[part, f"`{pattern}`", kind, count] for (part, pattern, kind), count in sorted(frozen.items())]
    parts = sorted({p for p, _, _ in groups})
    text = [
        "Each targeted layer is wrapped, not subclassed: `LoRALinear`, `LoRAConv2d` and `LoRAConvTranspose2d` "
        "(`lora_sam/lora/layers.py`) keep the original layer as `.base`, freeze it, and add a rank-r update "
        "`delta_W = B @ A * alpha / r`. `A` is initialised like `nn.Linear`'s weight (Kaiming uniform) and `B` "
        "with zeros, so a freshly wrapped model computes exactly what the base computes, and training moves "
        "away from the base smoothly.",
        "",
        "- **Linear**: `A` (r, in), `B` (out, r); the update is `x @ A.T @ B.T * alpha / r`.",
        "- **Conv2d**: factorised into two convolutions: `A` is a conv with the base's kernel, stride, padding and "
        "dilation (in -> r), `B` a 1x1 conv (r -> out); grouped convs apply `delta_weight()` as one grouped conv.",
        "- **ConvTranspose2d** (the mask decoder's upscaling): `A` a 1x1 conv (in -> r), then `B` a transposed conv "
        "with the base's geometry (r -> out), so the update has the base's output size and padding.",
        "- `merge()` folds `delta_weight()` into `base.weight` and `unmerge()` takes it out again; neither happens "
        "implicitly in `train()` / `eval()`. `merge_lora(model)` gives back plain layers, i.e. an official-format "
        "SAM checkpoint (`lora-sam export`), and `unmerge_lora(model)` puts the LoRA layers back.",
        "- `inject_lora(model, rank, alpha, targets)` freezes every parameter, then wraps the layers whose qualified "
        "names match the target patterns; only the `lora_A` / `lora_B` tensors train and are saved "
        "(`adapter.safetensors`, with rank, alpha, targets and layer names in its metadata).",
        "",
        f"This run (`{adapter.name}`): rank {info.rank}, alpha {info.alpha:g}, scaling alpha / rank = "
        f"{info.alpha / info.rank:g}, targets {', '.join(f'`{t}`' for t in info.targets)}; {len(info.layers)} "
        f"layers wrapped, in {', '.join(f'`{p}`' for p in parts)}. From the adapter's metadata and tensor shapes:",
        "",
        markdown_table(["part", "layers", "type", "count", "LoRA parameters"], rows, "lllrr"),
        "",
        "Linear / conv layers left as they were (frozen in the LoRA run): "
        + ("none." if not frozen_rows else ""),
    ]
    if frozen_rows:
        text += ["", markdown_table(["part", "layers", "type", "count"], frozen_rows, "lllr")]
    text += ["", "Everything else (layer norms, position embeddings, the prompt encoder's point and mask "
             "embeddings, biases of wrapped layers) is frozen in the LoRA run; the full run trains all of it."]
    return "\n".join(text)


def parameters_section(run: Run) -> str:
    """2. Total and trainable parameters per SAM part, fully unfrozen and with this run's LoRA."""
    from lora_sam.lora.adapter import read_adapter_info
    from lora_sam.lora.summary import parameter_summary

    info = read_adapter_info(run.weights("lora"))
    full = parameter_summary(run.plain_model)
    lora = parameter_summary(run.lora_model(info.layers, info.rank, info.alpha))
    h, w = run.image_size
    text = [
        f"`{run.model_type}` at the training resolution {h}x{w} ({family_of(run.model_type).frame_note((h, w))}), "
        f"counted with `parameter_summary`.",
        "",
        "**Fully unfrozen** (every parameter trains):", "", full.to_markdown(), "",
        f"**LoRA** rank {info.rank}, alpha {info.alpha:g}, {len(info.layers)} layers wrapped:", "", lora.to_markdown(), "",
        f"LoRA trains {lora.trainable:,} of {lora.total:,} parameters ({100 * lora.trainable / lora.total:.3f} %); "
        f"the base holds {full.total:,}, so the adapter adds {lora.total - full.total:,} parameters "
        f"({100 * (lora.total - full.total) / full.total:.3f} % of the base).",
    ]
    runs = run.compare.get("runs", {}) if (run.root / "compare.json").is_file() else {}
    recorded = {m: runs[m].get("trainable_params") for m in ("lora", "full") if m in runs}
    if recorded:
        same = recorded.get("lora") == lora.trainable and recorded.get("full") == full.trainable
        text.append(f"The training runs recorded {recorded.get('lora', 'n/a'):,} (LoRA) and "
                    f"{recorded.get('full', 'n/a'):,} (full) trainable parameters in `compare.json`"
                    + (", the same counts." if same else ", which differ from the counts above."))
    return "\n".join(text)


def compare_section(run: Run) -> str:
    """3. LoRA against fully unfrozen SAM: metrics, time per step, peak memory, file sizes, with a figure."""
    from lora_sam.report.figures import plot_bars

    result = run.compare
    s, runs = result["settings"], result["runs"]
    for mode in ("lora", "full"):
        if mode not in runs:
            raise Missing(f"the {mode} run in `{run.root / 'compare.json'}`")
    lora, full = runs["lora"], runs["full"]
    metrics = {"base (step 0)": result["base"]["metrics"], "LoRA": lora["metrics"], "full": full["metrics"]}
    if "original" in result:
        metrics["original 1024"] = result["original"]["metrics"]
    keys = ("miou@1", "miou@3", "miou@5", "noc@90", "box_miou", "iou_head_mae")
    figure = plot_bars({
        "mIoU@1 (higher is better)": {n: m.get("miou@1") for n, m in metrics.items()},
        "box mIoU": {n: m.get("box_miou") for n, m in metrics.items()},
        "time per step (ms)": {"LoRA": _scaled(lora.get("step_time_s"), 1000), "full": _scaled(full.get("step_time_s"), 1000)},
        "peak memory (MB)": {"LoRA": _scaled(lora["memory"].get("peak_bytes"), 2**-20),
                             "full": _scaled(full["memory"].get("peak_bytes"), 2**-20)},
        "weights file (MB)": {"LoRA": lora["weights_bytes"] / 2**20, "full": full["weights_bytes"] / 2**20},
    }, run.figures / "lora_vs_full.png", title="LoRA vs fully unfrozen SAM, same base, data, seed and steps")
    return "\n".join([
        f"Both runs start from `{Path(s['checkpoint']).name}` and train {s['steps']} steps on the same data "
        f"(`{s['data']}`), seed {s['seed']}, batch {s['batch_size']} images x {s['masks_per_image']} masks, at "
        f"{s['image_size'][0]}x{s['image_size'][1]}; LoRA lr {s['lr']['lora']:g}, full lr {s['lr']['full']:g}; "
        f"each in its own process on {lora.get('device', 'n/a')}"
        + (f"; other `LoRASAM` options: {', '.join(f'{k} {v}' for k, v in s['module_options'].items())}."
           if s.get("module_options") else "."),
        "",
        cost_table(runs),
        "",
        cost_note(runs),
        "",
        markdown_table(*metric_rows({name: {k: m.get(k) for k in keys} for name, m in metrics.items()})),
        "",
        f"![LoRA vs full](figures/{figure.name})",
    ])


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else float(value) * factor


def targets_section(run: Run) -> str:
    """4. The 3 masks ``point_sample`` and ``box_sample`` assign, on an image of the run's data (and real SA-1B)."""
    from lora_sam.data.loaders import open_dataset, split_folders
    from lora_sam.report.target_figures import target_figures

    folders = split_folders(run.data_root)
    root = folders[0] if folders else run.data_root  # a fixed split: its training images
    size = (192, 256)  # above the training resolution, so that small parts stay visible
    dataset = open_dataset(root, image_size=size)
    candidates = (dataset[i] for i in range(len(dataset)))
    sample = next((c for c in candidates if isinstance(c, dict) and len(c["masks"]) >= 4), None)
    if sample is None:
        raise Missing(f"an image with at least 4 masks in `{root}`")
    cases = ["one positive point", "one positive and one negative point", "3 positive and 2 negative points",
             "one box"]
    text = [
        "`point_sample(all_masks, points, labels)` keeps the masks that contain every positive point and no "
        "negative one, sorts them by area and returns the largest, the one whose area is closest (log scale) to "
        "the geometric mean of the largest and smallest, and the smallest: whole, part, sub-part. "
        "`box_sample(all_masks, box)` returns the mask whose own box fits the prompt best plus masks lying inside "
        "the box (at least 80 % of their pixels), by box IoU, ordered big to small. Each figure: the prompt, then "
        "the 3 assigned masks, largest first (green points positive, red negative, yellow box).",
        "",
        f"Image `{sample['image_id']}` of the run's data `{root}` ({len(sample['masks'])} masks), drawn at "
        f"{size[0]}x{size[1]} (training used {run.image_size[0]}x{run.image_size[1]}) so that small parts stay visible:",
        "",
    ]
    paths = target_figures(sample["image"], sample["masks"], run.figures, torch.Generator().manual_seed(0),
                           prefix="targets_data")
    text += [f"![{case}](figures/{p.name})" for case, p in zip(cases, paths)]
    real = run.real_data / "sa1b" if run.real_data else None
    if real is not None and (real / "sa_1.jpg").is_file() and (real / "sa_1.json").is_file():
        real_size = (256, 192)
        sa1b = open_dataset(real, image_size=real_size)[0]
        if isinstance(sa1b, dict):
            paths = target_figures(sa1b["image"], sa1b["masks"], run.figures, torch.Generator().manual_seed(0),
                                   prefix="targets_sa1b")
            text += ["", f"The real SA-1B sample `sa_1` ({len(sa1b['masks'])} masks, read from their RLE straight "
                     f"at low resolution by the data loader's fast path, in a {real_size[0]}x{real_size[1]} frame; "
                     f"not part of the repository):", ""]
            text += [f"![SA-1B, {case}](figures/{p.name})" for case, p in zip(cases, paths)]
    return "\n".join(text)
