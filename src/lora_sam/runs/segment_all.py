"""``lora-sam segment-all``: SAM's "segment everything" over images, written as SA-1B-format JSON.

The base checkpoint is built at 1024 px and the adapter, if any, merged into it with the functions of
``lora-sam export`` (``lora_sam.lora.adapter``); the official automatic mask generator then runs on each
image. Per image ``<stem>.json`` holds ``{"image": {...}, "annotations": [...]}`` with COCO RLE masks,
readable by SA-1B tools and by this package's own data loaders, and ``<stem>_masks.png`` shows them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn
from tqdm import tqdm

from lora_sam.io import atomic_path
from lora_sam.lora.adapter import merged_sam
from lora_sam.models.sam_v1.deploy import automatic_mask_generator, masks_to_coco, write_overlay
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
            raise ValueError(
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
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(
            f"{path} is not a readable image ({err}); pass a JPEG, PNG, TIFF, BMP or WebP file, "
            f"or remove it from the folder"
        ) from err


def read_image(path: Path) -> np.ndarray:
    """The image as RGB uint8 (H, W, 3)."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
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
        raise ValueError(f"--device {name!r} is not a torch device ({err}); use cpu or cuda") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this machine has no CUDA GPU visible to torch; use --device cpu")
    return device


def segment_image(generator: Any, path: Path, out: Path) -> int:
    """Write ``<stem>.json`` and ``<stem>_masks.png`` of one image into ``out``; returns the mask count."""
    image = read_image(path)
    height, width = image.shape[:2]
    annotations = masks_to_coco(generator.generate(image), (height, width))
    document = {
        "image": {"image_id": path.stem, "file_name": path.name, "height": height, "width": width},
        "annotations": annotations,
    }
    with atomic_path(out / f"{path.stem}.json") as tmp:
        tmp.write_text(json.dumps(document))
    with atomic_path(out / f"{path.stem}_masks.png") as tmp:
        write_overlay(tmp, image, annotations)
    return len(annotations)


def segment_all(args: argparse.Namespace) -> tuple[int, int]:
    """Segment every image of ``args.source`` into ``args.out``; returns (images, masks)."""
    if args.points_per_side < 1 or args.points_per_batch < 1:
        raise ValueError("--points-per-side and --points-per-batch must be at least 1")
    device = check_device(args.device)
    images = find_images(args.source)
    for path in images:
        check_image(path)
    sam = merged_model(args.checkpoint, args.model_type, args.adapter).to(device)
    generator = automatic_mask_generator(
        sam,
        points_per_side=args.points_per_side,
        points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        box_nms_thresh=args.box_nms_thresh,
        min_mask_region_area=args.min_mask_region_area,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    masks = 0
    for path in tqdm(images, desc="segment-all", unit="image"):
        masks += segment_image(generator, path, args.out)
    return len(images), masks


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        default=None,
        metavar="CKPT",
        help="base SAM checkpoint, official format (default: $LORA_SAM_CHECKPOINT, then "
        "~/.cache/lora_sam/<official file>; 'builtin' for the shipped tiny base)",
    )
    parser.add_argument(
        "--model-type",
        default=None,
        help=f"vit_b / vit_l / vit_h / tiny (default: the adapter's, else {MODEL_TYPE})",
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
    """The options of SAM's automatic mask generator, with its defaults (chosen by Meta for ViT-H)."""
    options = (
        ("--points-per-side", int, 32, "N", "a grid of N x N point prompts per image (default 32; 8-16 is faster)"),
        ("--points-per-batch", int, 64, "K", "point prompts decoded together (default 64; lower it on small GPUs)"),
        ("--pred-iou-thresh", float, 0.88, "T", "keep masks whose predicted IoU is at least T (default 0.88)"),
        ("--stability-score-thresh", float, 0.95, "T", "keep masks whose stability score is >= T (default 0.95)"),
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
    try:
        images, masks = segment_all(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"lora-sam segment-all: error: {err}", file=sys.stderr)
        return 2
    print(f"lora-sam segment-all: {masks} masks in {images} image(s) written to {args.out}")
    return 0
