"""``lora-sam eval``: choose the images, build the models, evaluate them alike, write the files.

``evaluate_models`` writes ``eval.json`` (settings, and per model its description, metrics and
per-prompt arrays, see ``protocol.evaluate_many``) and ``eval.md`` (the metrics table).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lora_sam.errors import UserError
from lora_sam.evaluation.automatic import automatic_recall
from lora_sam.evaluation.options import EVAL_DEFAULTS, EvalModels, EvalOptions
from lora_sam.evaluation.protocol import evaluate_many, json_safe
from lora_sam.evaluation.segmenters import LowResSegmenter, PredictorSegmenter, Segmenter
from lora_sam.io import markdown_table
from lora_sam.lora import merge_lora
from lora_sam.lora.adapter import apply_adapter, read_adapter_info
from lora_sam.models.checkpoints import resolve_checkpoint
from lora_sam.models.families import family_of, original_frame
from lora_sam.settings import add_options, from_args, to_dict
from lora_sam.training.metrics import metric_rows

__all__ = ["add_arguments", "build_segmenters", "eval_samples", "evaluate_models", "run", "write_eval"]


def _network(model_type: str, checkpoint: str | Path | None, image_size: tuple[int, int]) -> nn.Module:
    """The network of ``model_type`` at ``image_size``, built by its family."""
    return family_of(model_type).build(model_type, checkpoint, image_size)


def _unique_names(kind: str, paths: list[Path]) -> list[str]:
    names = [f"{kind}:{p.stem}" for p in paths]
    if len(set(names)) < len(names):
        names = [f"{kind}:{p.parent.name}/{p.stem}" for p in paths]
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return unique


def _lora_sam(path: Path, model_type: str, checkpoint: Path, image_size: tuple[int, int]) -> nn.Module:
    info = read_adapter_info(path)
    if info.model_type and info.model_type != model_type:
        raise ValueError(f"adapter {path}: it was trained on {info.model_type} (metadata 'model_type') but the "
                         f"base is {model_type}; pass --model-type {info.model_type} and its checkpoint")
    sam = _network(model_type, checkpoint, image_size)
    try:
        apply_adapter(sam, path)
    except (ValueError, KeyError, RuntimeError) as err:
        message = str(err) if str(path) in str(err) else f"adapter {path} does not fit {model_type}: {err}"
        raise ValueError(message) from err
    return merge_lora(sam)


def _full_sam(path: Path, model_type: str, image_size: tuple[int, int]) -> nn.Module:
    try:
        return _network(model_type, path, image_size)
    except ValueError as err:
        raise ValueError(f"fully fine-tuned model {path}: {err}. A model.pth holds the weights at its training "
                         f"resolution: evaluate it with that --image-size and --model-type") from err


def build_segmenters(
    models: EvalModels,
    *,
    original_full_res: bool = False,
    device: str | torch.device | None = None,
) -> dict[str, tuple[Segmenter, dict[str, Any]]]:
    """The models to compare, by row name, with a description of each.

    Names: ``"base"`` (the checkpoint at ``image_size``), ``"lora:<file stem>"`` (each adapter on the
    base, merged), ``"full:<file stem>"`` (each ``model.pth``); with ``original``, ``"original-1024"``
    (``SamPredictor`` on the base at 1024 px, given the upscaled training image) and each fine-tuned
    model as deployed (``"lora:<stem>@1024"``, ``"full:<stem>@1024"``: ``_deployed``); with
    ``original_full_res``, ``"original-1024:full-res"`` (given the original image). Clashing stems get
    their folder name (``lora:run1/adapter``). The ``1024`` rows are each model type's own pipeline at its own
    frame (``families.original_frame``): 1024 px, LiteMedSAM's 256 px (their ``resolution`` says which).

    Returns:
        {name: (segmenter, {"kind": "base" | "lora" | "full" | "deployed" | "original", "path": str | None,
        "resolution": [H, W], "input": "training image" | "training image upscaled" | "original image"})}
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model_type, checkpoint, image_size = models.model_type, models.checkpoint, models.image_size
    base, adapters, fulls, original = models.base, models.adapters, models.fulls, models.original
    base_path = None
    if base or adapters or original:
        base_path = resolve_checkpoint(model_type, checkpoint)
        if base_path is None:
            raise ValueError(f"evaluation needs a base checkpoint file for {model_type} (random weights would differ "
                             f"between the models built from them): pass --checkpoint PATH")
    size = list(image_size)
    built: dict[str, tuple[Segmenter, dict[str, Any]]] = {}
    if base:
        sam = _network(model_type, base_path, image_size).to(device)
        built["base"] = (LowResSegmenter(sam), {"kind": "base", "path": str(base_path), "resolution": size,
                                                 "input": "training image"})
    adapter_paths, full_paths = [Path(p) for p in adapters], [Path(p) for p in fulls]
    for kind, paths in (("lora", adapter_paths), ("full", full_paths)):
        for name, path in zip(_unique_names(kind, paths), paths):
            sam = (_lora_sam(path, model_type, base_path, image_size) if kind == "lora"  # type: ignore[arg-type]
                   else _full_sam(path, model_type, image_size))
            built[name] = (LowResSegmenter(sam.to(device)), {"kind": kind, "path": str(path), "resolution": size,
                                                             "input": "training image"})
    if original:  # each fine-tuned model as users deploy it: merged, SamPredictor at 1024 px
        built.update(_deployed(model_type, base_path, adapter_paths, full_paths, device))  # type: ignore[arg-type]
        frame = original_frame(model_type)  # 1024 px; LiteMedSAM's 256 (the row names keep "1024": the own frame)
        sam_1024 = _network(model_type, base_path, frame).to(device)
        built["original-1024"] = (PredictorSegmenter(sam_1024, source="upscaled"),
                                  {"kind": "original", "path": str(base_path), "resolution": list(frame),
                                   "input": "training image upscaled"})
        if original_full_res:
            built["original-1024:full-res"] = (PredictorSegmenter(sam_1024, source="original"),
                                               {"kind": "original", "path": str(base_path),
                                                "resolution": list(frame), "input": "original image"})
    if not built:
        raise ValueError("no model to evaluate: give the base, --adapter, --full or --original")
    return built


def _deployed(model_type: str, base_path: Path, adapters: list[Path], fulls: list[Path],
              device: torch.device) -> dict[str, tuple[Segmenter, dict[str, Any]]]:
    """``"lora:<stem>@1024"`` / ``"full:<stem>@1024"``: each adapter merged into the base checkpoint and
    each full model at 1024 px, through ``SamPredictor``, as ``lora-sam export`` users run them."""
    models: dict[str, tuple[Segmenter, dict[str, Any]]] = {}
    frame = original_frame(model_type)
    for kind, paths in (("lora", adapters), ("full", fulls)):
        for name, path in zip(_unique_names(kind, paths), paths):
            sam = (_lora_sam(path, model_type, base_path, frame) if kind == "lora"
                   else _full_sam(path, model_type, frame))
            models[f"{name}@1024"] = (PredictorSegmenter(sam.to(device), source="upscaled"),
                                      {"kind": "deployed", "of": kind, "path": str(path),
                                       "resolution": list(frame), "input": "training image upscaled"})
    return models


def _original_path(dataset: Any, index: int) -> str | None:
    """The full-resolution image file of item ``index`` of an SA-1B folder or COCO dataset, if any."""
    from lora_sam.data.datasets import CocoInstances, SA1BFolder

    if isinstance(dataset, SA1BFolder):
        path = dataset.items[index].with_suffix(".jpg")
    elif isinstance(dataset, CocoInstances):
        path = dataset.image_dir / (dataset.items[index].file_name or "")
    else:
        return None
    return str(path) if path.is_file() else None


def eval_samples(
    root: str | Path | None,
    image_size: tuple[int, int],
    options: EvalOptions = EVAL_DEFAULTS,
    *,
    frame: str,
) -> tuple[Iterator[Any], int | None, bool]:
    """The samples to evaluate: the val split of ``get_loaders`` (same split as training) or all
    (``options``' split, val_fraction, max_images and seed), made in ``frame`` (``SampleOptions.frame``:
    the model family's, ``EvalModels.frame``).

    Returns ``(samples, count or None, originals)``: an iterator of sample dicts (``BadSample`` for
    unreadable ones), with ``"original_path"`` added where the dataset keeps full-resolution image
    files (SA-1B folders, COCO), and whether it does.
    """
    from lora_sam.data.loaders import get_loaders, open_dataset, resolve_root, split_folders

    split, val_fraction, max_images, seed = options.split, options.val_fraction, options.max_images, options.seed
    if split == "val":
        _, loader = get_loaders(root, image_size=image_size, batch_size=1, val_fraction=val_fraction,
                                num_workers=0, seed=seed, frame=frame)
        if loader is None:
            raise ValueError(f"{resolve_root(root)}: no val images (val_fraction {val_fraction}); "
                             f"use --split all or a larger --val-fraction")
        dataset = loader.dataset
    elif split == "all":
        if split_folders(resolve_root(root)) is not None:
            raise UserError(f"{resolve_root(root)} holds a fixed split (train/ and val/): evaluate its val split "
                            f"(--split val), or one folder with --data {resolve_root(root)}/val --split all")
        dataset = open_dataset(resolve_root(root), image_size=image_size, seed=seed, frame=frame)
    else:
        raise ValueError(f"split must be 'val' or 'all', got {split!r}")
    if not hasattr(dataset, "__len__"):
        stream = iter(dataset)
        samples = stream if max_images is None else (s for _, s in zip(range(max_images), stream))
        return samples, max_images, False
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    originals = count > 0 and _original_path(dataset, 0) is not None

    def generate() -> Iterator[Any]:
        for index in range(count):
            sample = dataset[index]
            if isinstance(sample, dict) and originals:
                sample["original_path"] = _original_path(dataset, index)
            yield sample

    return generate(), count, originals


def write_eval(out: str | Path, report: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``eval.json`` (``report`` as is) and ``eval.md`` (settings and the metrics table) into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "eval.json", out / "eval.md"
    json_path.write_text(json.dumps(json_safe(report), indent=1))
    models, settings = report["models"], report["settings"]
    first = next(iter(models.values()))
    lines = [
        "# Evaluation", "",
        f"Data: `{settings['data']}` ({settings['split']} split), {first['images']} images, "
        f"{first['prompt_count']} target masks; training resolution {settings['image_size'][0]}x"
        f"{settings['image_size'][1]}, {settings['model_type']}, base checkpoint `{settings['checkpoint']}`.", "",
        f"Protocol: up to {settings['max_clicks']} clicks per target, the standard click (RITM, SAM 2: the most "
        f"interior pixel of the error region with the larger distance-transform maximum, never twice on one pixel; "
        f"first click: 3 outputs, the highest predicted IoU kept; later clicks: {settings['refine']} output; the "
        f"exact GT box: {settings.get('box_output', 'multi')} output); masks compared with the GT at the training "
        f"resolution.", "",
        markdown_table(*metric_rows({name: entry["metrics"] for name, entry in models.items()})), "",
        markdown_table(["model", "kind", "input", "resolution", "seconds"],
                       [[name, e["kind"], e["input"], f"{e['resolution'][0]}x{e['resolution'][1]}", f"{e['seconds']:.1f}"]
                        for name, e in models.items()], "llllr"),
    ]
    if first["skipped"]:
        lines += ["", f"Skipped {len(first['skipped'])} samples: " + "; ".join(first["skipped"][:10])]
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path


def evaluate_models(
    data: str | Path | None,
    out: str | Path | None,
    models: EvalModels,
    options: EvalOptions = EVAL_DEFAULTS,
    *,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """``lora-sam eval``: build the models, evaluate them on the same data, write the files.

    Returns (and writes to ``out/eval.json`` unless ``out`` is None)::

        {"settings": {"data", "model_type", "checkpoint", "image_size": [H, W], "device", **options' fields},
         "models": {name: {"kind", "path", "resolution", "input", **evaluate_many entry}}}
    """
    from lora_sam.data.loaders import resolve_root

    o = options
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    samples, count, originals = eval_samples(data, models.image_size, o, frame=models.frame)
    if o.automatic:  # the automatic masks run at 1024 px: the deployed rows
        models = replace(models, original=True)
    built = build_segmenters(models, original_full_res=models.original and originals, device=device)
    try:
        results = evaluate_many({name: seg for name, (seg, _) in built.items()}, samples, max_clicks=o.max_clicks,
                                seed=o.seed, masks_per_image=o.masks_per_image, refine=o.refine,
                                box_output=o.box_output, progress=progress, total=count)
    except UserError as err:  # the data's fault: say which data
        raise UserError(f"{resolve_root(data)}: {err}") from err
    if o.automatic:
        _add_automatic(results, built, data, models, o, out, progress=progress, total=count)
    report = {
        "settings": {"data": resolve_root(data), **to_dict(o), "model_type": models.model_type,
                     "checkpoint": next((i["path"] for _, i in built.values() if i["kind"] != "full"), None),
                     "image_size": list(models.image_size), "device": device},
        "models": {name: {**info, **results[name]} for name, (_, info) in built.items()},
    }
    if out is not None:
        write_eval(out, report)
    return report


def _add_automatic(results: dict[str, Any], built: dict[str, Any], data: str | Path | None, models: EvalModels,
                   o: EvalOptions, out: str | Path | None, *, progress: bool, total: int | None) -> None:
    """AR@100 / AR@1000 of each 1024 px model into ``results``; the first image's masks into
    ``out/automatic.pt`` (the report's figure)."""
    samples = eval_samples(data, models.image_size, replace(o, max_images=_fewest(o.max_images, o.automatic_images)),
                           frame=models.frame)[0]
    example: dict[str, Any] = {}
    recall = automatic_recall({name: seg for name, (seg, _) in built.items()}, samples, points_per_side=o.automatic_points,
                              progress=progress, total=_fewest(total, o.automatic_images), example=example)
    for name, values in recall.items():
        results[name]["metrics"].update({k: values[k] for k in ("ar@100", "ar@1000")})
        results[name]["automatic"] = values
    if out is not None and example:
        Path(out).mkdir(parents=True, exist_ok=True)
        torch.save(example, Path(out) / "automatic.pt")


def _fewest(*counts: int | None) -> int | None:
    given = [c for c in counts if c is not None]
    return min(given) if given else None


# ----------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Evaluate models on the same images, target masks and simulated clicks; writes DIR/eval.json "
        "(metrics and per-prompt IoUs) and DIR/eval.md (one table row per model)."
    )
    parser.add_argument("--data", default=None, help="data root (default $LORA_SAM_DATA, then ./data)")
    add_options(parser.add_argument_group("models (EvalModels)"), EvalModels)
    add_options(parser.add_argument_group("scoring (EvalOptions)"), EvalOptions)
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    parser.add_argument("--out", type=Path, default=Path("runs/eval"), help="output folder (default runs/eval)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    report = evaluate_models(args.data, args.out, from_args(EvalModels, args), from_args(EvalOptions, args),
                             device=args.device, progress=not args.quiet)
    print(markdown_table(*metric_rows({name: entry["metrics"] for name, entry in report["models"].items()})))
    print(f"wrote {args.out / 'eval.json'} and {args.out / 'eval.md'}")
    return 0
