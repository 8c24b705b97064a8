"""``lora-sam segment-all``: SAM's "segment everything" over images, written as SA-1B-format JSON.

The base checkpoint is built at 1024 px and the adapter, if any, merged into it with the functions of
``lora-sam export`` (``lora_sam.lora.adapter``); its family's own automatic mask generator (Meta's
``SamAutomaticMaskGenerator`` for SAM v1, ``SAM2AutomaticMaskGenerator`` for SAM 2.1, through
``lora_sam.models.families.mask_generator``) then runs on each image. Per image ``<stem>.json`` holds
``{"image": {...}, "annotations": [...]}`` with COCO RLE masks, readable by SA-1B tools and by this package's
own data loaders, and ``<stem>_masks.png`` shows them.

The generator's quality thresholds (predicted IoU, stability) are the base's where it has its own (a built-in
base's model card: ``lora_sam.models.checkpoints.automatic_defaults``), Meta's otherwise; the command prints
which and from where. An image that keeps no mask is explained on stderr: how many candidates each filter
removed (a second pass keeps every candidate and ``lora_sam.evaluation.automatic.filter_candidates`` applies
the filters to them) and which option lowers it.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn
from tqdm import tqdm

from lora_sam.data.sa1b_write import masks_to_coco, write_overlay
from lora_sam.errors import UserError
from lora_sam.evaluation.automatic import ALL_CANDIDATES, filter_candidates
from lora_sam.io import atomic_path
from lora_sam.lora.adapter import merged_sam
from lora_sam.models.checkpoints import BUILTIN_FILES, automatic_defaults
from lora_sam.models.families import family_of, mask_generator, model_types_help
from lora_sam.settings import MODEL_TYPE

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def find_images(source: Path) -> list[Path]:
    """The image files to segment: ``source`` itself, or the images directly inside the folder, sorted."""
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist: pass an image file or a folder of images")
    if source.is_file():
        return [source]
    images = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(f"folder {source} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    stems: dict[str, Path] = {}
    for path in images:
        if path.stem in stems:
            raise UserError(
                f"{stems[path.stem].name} and {path.name} would both be written as {path.stem}.json: "
                f"rename one of them or segment them apart"
            )
        stems[path.stem] = path
    return images


def check_image(path: Path) -> None:
    """Fail early, before the model is built, on a file that is not an image."""
    try:
        with Image.open(path) as image:
            image.verify()
    except Image.DecompressionBombError as err:
        raise ValueError(f"{path} is too large to segment ({err}); downscale it first") from err
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(
            f"{path} is not a readable image ({err}); pass a JPEG, PNG, TIFF, BMP or WebP file, "
            f"or remove it from the folder"
        ) from err


def read_image(path: Path) -> np.ndarray:
    """The image as RGB uint8 (H, W, 3)."""
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))  # writable: SAM 2's transforms warn on a read-only one
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"{path} could not be decoded ({err}); re-save it as PNG or JPEG") from err


def merged_model(checkpoint: str | Path | None, model_type: str | None, adapter: Path | None) -> nn.Module:
    """The base built at 1024 px with ``adapter`` (if any) folded in, as ``lora-sam export`` merges it."""
    return merged_sam(adapter, checkpoint, model_type).eval()


def check_device(name: str) -> torch.device:
    """The torch device ``name``, refused clearly when this machine has none of it."""
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"--device {name!r} is not a torch device ({err}); use cpu or cuda") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: this machine has no CUDA GPU visible to torch; use --device cpu")
    return device


THRESHOLDS = {"pred_iou_thresh": "--pred-iou-thresh", "stability_score_thresh": "--stability-score-thresh"}
"""The generator's quality thresholds and their options."""
_PASSED = ("points_per_side", "points_per_batch", "box_nms_thresh", "min_mask_region_area")


def generator_options(args: argparse.Namespace, model_type: str | None) -> tuple[dict[str, Any], dict[str, str]]:
    """The generator's keyword arguments, and where each quality threshold comes from: its option when given,
    else the base's model card (``automatic_defaults``), else Meta's (the threshold is not passed, so the
    generator keeps its own default)."""
    options = {name: getattr(args, name) for name in _PASSED}
    defaults, source = automatic_defaults(model_type, args.checkpoint) if model_type else ({}, "")
    sources = {}
    for name, flag in THRESHOLDS.items():
        if getattr(args, name) is not None:
            options[name], sources[name] = getattr(args, name), flag
        elif name in defaults:
            options[name], sources[name] = defaults[name], source
        else:
            sources[name] = source or "Meta's defaults"
    return options, sources


def _threshold(value: float, relation: str) -> str:
    return f"{relation} {value:g}" if value > 0 else "off (0)"


def thresholds_text(generator: Any, sources: dict[str, str]) -> str:
    """Which quality thresholds the generator applies and where they come from, one line."""
    iou = f"predicted IoU {_threshold(generator.pred_iou_thresh, '>')}"
    stability = f"stability score {_threshold(generator.stability_score_thresh, '>=')}"
    first, second = sources["pred_iou_thresh"], sources["stability_score_thresh"]
    said = (f"{iou} and {stability}, from {first}" if first == second
            else f"{iou} (from {first}) and {stability} (from {second})")
    return f"lora-sam segment-all: {type(generator).__name__} keeps masks of {said}"


class AutomaticMasks:
    """The family's generator over a merged network with the command's options, and why it kept no mask."""

    def __init__(self, network: nn.Module, options: dict[str, Any]) -> None:
        self.network, self.options = network, options
        self.generator = mask_generator(network, **options)

    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        with torch.no_grad():
            return self.generator.generate(image)

    def why_none(self, image: np.ndarray, name: str) -> str:
        """Why ``image`` kept no mask: each filter's count over every candidate (one more generator pass with
        the filters off, ``ALL_CANDIDATES``) and the options that lower it."""
        probe = mask_generator(self.network, **{**self.options, **ALL_CANDIDATES, "output_mode": "coco_rle"})
        with torch.no_grad():
            records = probe.generate(image)
        if not records:
            return f"lora-sam segment-all: {name}: no mask: the model made no candidate mask at all"
        g = self.generator
        _, removed = filter_candidates(records, g.pred_iou_thresh, g.stability_score_thresh, g.box_nms_thresh)
        alone = {option: filter_candidates(records, *thresholds, 1.0)[1][key] for option, key, thresholds in (
            ("pred_iou_thresh", "pred_iou", (g.pred_iou_thresh, 0.0)),
            ("stability_score_thresh", "stability", (0.0, g.stability_score_thresh)))}
        best = {"pred_iou_thresh": max(r["predicted_iou"] for r in records),
                "stability_score_thresh": max(r["stability_score"] for r in records)}
        lower = [f"{flag} (the best candidate's value is {best[key]:.3f}; this filter alone removes "
                 f"{alone[key]} of {len(records)})" for key, flag in THRESHOLDS.items() if alone[key]]
        left = len(records) - removed["pred_iou"]
        return (f"lora-sam segment-all: {name}: no mask kept of its {len(records)} candidate masks: the "
                f"predicted-IoU filter ({_threshold(g.pred_iou_thresh, '>')}, --pred-iou-thresh) removed "
                f"{removed['pred_iou']}; of the {left} left the stability filter "
                f"({_threshold(g.stability_score_thresh, '>=')}, --stability-score-thresh) removed "
                f"{removed['stability']}, and NMS (--box-nms-thresh {g.box_nms_thresh:g}) {removed['nms']} of the "
                f"{left - removed['stability']} after it. "
                + (f"Lower {' or '.join(lower)} to keep masks." if lower else
                   "These filters leave masks: what removed them is not one of them (--min-mask-region-area?)."))


def segment_image(masks: AutomaticMasks, path: Path, out: Path) -> int:
    """Write ``<stem>.json`` and ``<stem>_masks.png`` of one image into ``out``; returns the mask count (none:
    why, on stderr)."""
    image = read_image(path)
    height, width = image.shape[:2]
    annotations = masks_to_coco(masks.generate(image), (height, width))
    document = {
        "image": {"image_id": path.stem, "file_name": path.name, "height": height, "width": width},
        "annotations": annotations,
    }
    with atomic_path(out / f"{path.stem}.json") as tmp:
        tmp.write_text(json.dumps(document))
    with atomic_path(out / f"{path.stem}_masks.png") as tmp:
        write_overlay(tmp, image, annotations)
    if not annotations:
        tqdm.write(textwrap.fill(masks.why_none(image, path.name), width=110, break_long_words=False,
                                 break_on_hyphens=False), file=sys.stderr)
    return len(annotations)


def segment_all(args: argparse.Namespace) -> tuple[int, int, int]:
    """Segment every image of ``args.source`` into ``args.out``; returns (images, masks, images without a mask)."""
    if args.points_per_side < 1 or args.points_per_batch < 1:
        raise UserError("--points-per-side and --points-per-batch must be at least 1")
    device = check_device(args.device)
    images = find_images(args.source)
    for path in images:
        check_image(path)
    network = merged_model(args.checkpoint, args.model_type, args.adapter).to(device)
    model_type = family_of(network).model_type_of(network) or args.model_type
    options, sources = generator_options(args, model_type)
    masks = AutomaticMasks(network, options)
    print(thresholds_text(masks.generator, sources))
    args.out.mkdir(parents=True, exist_ok=True)
    counts = [segment_image(masks, path, args.out) for path in tqdm(images, desc="segment-all", unit="image")]
    return len(images), sum(counts), counts.count(0)


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        default=None,
        metavar="CKPT",
        help="base checkpoint, its family's official format (default: $LORA_SAM_CHECKPOINT, then "
        f"~/.cache/lora_sam/<official file>; 'builtin' for a built-in base: {', '.join(BUILTIN_FILES)})",
    )
    parser.add_argument(
        "--model-type",
        default=None,
        help=f"the base's model type: {model_types_help()} (default: the adapter's, else {MODEL_TYPE})",
    )
    parser.add_argument(
        "--adapter",
        type=Path,
        default=None,
        metavar="ADAPTER.safetensors",
        help="LoRA adapter to merge into the base; it must have been trained on this base checkpoint",
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")


def _add_generator_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the family's automatic mask generator; its quality thresholds default to the base's."""
    base = ("(default: the base's: a built-in base's model card sets its own, measured on its domain; else Meta's "
            "{}). 0 turns the filter off")
    options = (
        ("--points-per-side", int, 32, "N", "a grid of N x N point prompts per image (default 32; 8-16 is faster)"),
        ("--points-per-batch", int, 64, "K", "point prompts decoded together (default 64; lower it on small GPUs)"),
        ("--pred-iou-thresh", float, None, "T", "keep masks whose predicted IoU is above T "
         + base.format("for its large models: 0.88 for SAM v1, 0.8 for SAM 2.1")),
        ("--stability-score-thresh", float, None, "T", "keep masks whose stability score is at least T "
         + base.format("0.95")),
        ("--box-nms-thresh", float, 0.7, "T", "of two masks whose boxes overlap with IoU > T keep the better "
         "(default 0.7)"),
        ("--min-mask-region-area", int, 0, "A", "remove islands and fill holes under A pixels (default 0: off)"),
    )  # fmt: skip
    for flag, kind, default, metavar, text in options:
        parser.add_argument(flag, type=kind, default=default, metavar=metavar, help=text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        type=Path,
        metavar="IMAGE_OR_FOLDER",
        help="an image file, or a folder whose images (not sub-folders) are all segmented",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder for <stem>.json (SA-1B format, COCO RLE masks) and <stem>_masks.png per image",
    )
    _add_model_arguments(parser)
    _add_generator_arguments(parser)


def run(args: argparse.Namespace) -> int:
    images, masks, empty = segment_all(args)
    none = f" ({empty} kept no mask: why, on stderr)" if empty else ""
    print(f"lora-sam segment-all: {masks} masks in {images} image(s) written to {args.out}{none}")
    return 0
