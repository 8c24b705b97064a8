"""Synthetic data in the exact SA-1B format: ``sa_{id}.jpg`` (RGB JPEG) + ``sa_{id}.json``.

Two domains (``--domain``):

- ``scenes`` (the default, the source domain the built-in base model learns): colourful scenes
  with SA-1B's whole / part / sub-part hierarchies, occlusion, textures, touching objects of
  nearly one colour, thin shapes, objects of every size (``lora_sam.data.scenes``);
- ``microscopy`` (a shifted target domain): grey, low-contrast, densely packed cells with nuclei,
  organelles and nucleoli (``lora_sam.data.cells``).

Image sizes are SA-1B's shapes (4:3, 3:2, 16:9 or square, landscape or portrait) at a given
longest side (SA-1B's own images are about 1500 x 2250), or one fixed (H, W).

The JSON matches a real SA-1B file (one line)::

    {"image": {"image_id", "width", "height", "file_name"},
     "annotations": [{"bbox": XYWH (w, h one less than pycocotools.mask.toBbox, as in SA-1B),
                      "area": int, "segmentation": {"size": [h, w], "counts": compressed RLE str},
                      "predicted_iou", "point_coords": [[x, y]] (a pixel on the mask),
                      "crop_box": [0, 0, w, h], "id": int, "stability_score"}]}

``format="labels"`` / ``"masks"`` (``--format``) writes the same images and masks in the layouts of
``lora_sam.data.labels`` instead: ``images/sa_{id}.jpg`` (the same JPEG) with ``labels/sa_{id}.png``,
an instance map (8 bit, or 16 bit past 255 instances) of the masks contained in no other mask
(the visible wholes; an instance map holds one value per pixel), or with
``masks/sa_{id}/NNN.png``, every mask as a 0 / 255 PNG in the JSON's order.

Every image depends only on ``(seed, image_id, domain)``: the same arguments give identical bytes.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from lora_sam.data.cells import draw_cells
from lora_sam.data.scenes import draw_scene
from lora_sam.errors import UserError

__all__ = ["DOMAINS", "FORMATS", "SA1B_ASPECTS", "make_synthetic", "outermost", "sa1b_size"]

Drawer = Callable[[np.random.Generator, tuple[int, int]], tuple[np.ndarray, list[np.ndarray]]]
DOMAINS: dict[str, Drawer] = {"scenes": draw_scene, "microscopy": draw_cells}
SA1B_ASPECTS = ((3, 4), (2, 3), (9, 16), (1, 1))
"""Short : long side ratios of SA-1B's images (most are 3:4 or 2:3)."""
FORMATS = ("sa1b", "labels", "masks")
"""Layouts ``make_synthetic`` writes: SA-1B pairs, or the instance-label folders of ``data.labels``."""
_MIN_SIDE = 32
DEFAULT_LONG_SIDE = 1024


def sa1b_size(rng: np.random.Generator, long_side: int) -> tuple[int, int]:
    """(H, W) of an SA-1B-shaped image: a random aspect of ``SA1B_ASPECTS``, landscape 3 times in 4."""
    short, long = SA1B_ASPECTS[int(rng.choice(len(SA1B_ASPECTS), p=[0.45, 0.3, 0.15, 0.1]))]
    other = max(_MIN_SIDE, round(long_side * short / long))
    return (other, long_side) if rng.uniform() < 0.75 else (long_side, other)


def _annotation(rng: np.random.Generator, mask: np.ndarray, annotation_id: int) -> dict:
    height, width = mask.shape
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
    ys, xs = np.nonzero(mask)
    pick = int(rng.integers(ys.size))
    return {
        "bbox": [x, y, w - 1.0, h - 1.0],
        "area": int(mask_utils.area(rle)),
        "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
        "predicted_iou": float(rng.uniform(0.86, 1.01)),
        "point_coords": [[float(xs[pick]), float(ys[pick])]],
        "crop_box": [0.0, 0.0, float(width), float(height)],
        "id": annotation_id,
        "stability_score": float(rng.uniform(0.92, 1.0)),
    }


def outermost(masks: list[np.ndarray]) -> list[int]:
    """Indices of the non-empty masks contained in no other (of equal masks, the first): the visible wholes."""
    boxes = [mask_utils.toBbox(mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))) for m in masks]
    areas = [int(m.sum()) for m in masks]
    kept = []
    for i, (mask, (x, y, w, h)) in enumerate(zip(masks, boxes)):
        crop = np.s_[int(y): int(y + h), int(x): int(x + w)]
        inside = (
            j for j in range(len(masks))
            if j != i and (areas[j] > areas[i] or (areas[j] == areas[i] and j < i))
            and not (mask[crop] & ~masks[j][crop]).any()
        )
        if areas[i] and next(inside, None) is None:
            kept.append(i)
    return kept


def _write_layout(out: Path, name: str, image: np.ndarray, masks: list[np.ndarray], quality: int,
                  format: str) -> Path:
    """Write ``images/NAME.jpg`` and ``labels/NAME.png`` or ``masks/NAME/NNN.png``; returns the image path."""
    image_path = out / "images" / f"{name}.jpg"
    image_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(image_path, format="JPEG", quality=quality)
    if format == "labels":
        wholes = outermost(masks)
        labels = np.zeros(image.shape[:2], dtype=np.uint8 if len(wholes) < 256 else np.uint16)
        for value, index in enumerate(wholes, start=1):
            labels[masks[index]] = value
        (out / "labels").mkdir(exist_ok=True)
        Image.fromarray(labels).save(out / "labels" / f"{name}.png")
    else:
        folder = out / "masks" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, mask in enumerate(masks):
            Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{i:03d}.png")
    return image_path


def _write_sample(out: Path, image_id: int, *, seed: int, image_size: tuple[int, int] | None, long_side: int,
                  domain: str, format: str = "sa1b") -> tuple[Path, int]:
    """Write ``sa_{image_id}.jpg`` and ``.json`` (or the ``format`` layout); returns the image path, the mask count."""
    rng = np.random.default_rng([seed, image_id, list(DOMAINS).index(domain)])
    height, width = image_size or sa1b_size(rng, long_side)
    image, masks = DOMAINS[domain](rng, (height, width))
    name = f"sa_{image_id}"
    quality = int(rng.integers(85, 96))
    if format != "sa1b":
        return _write_layout(out, name, image, masks, quality, format), len(masks)
    image_path = out / f"{name}.jpg"
    Image.fromarray(image).save(image_path, format="JPEG", quality=quality)
    record = {
        "image": {"image_id": image_id, "width": width, "height": height, "file_name": image_path.name},
        "annotations": [_annotation(rng, m, image_id * 1000 + i) for i, m in enumerate(masks)],
    }
    (out / f"{name}.json").write_text(json.dumps(record))
    return image_path, len(masks)


def _check(images: int, seed: int, image_size: tuple[int, int] | None, long_side: int, start_id: int,
           domain: str, format: str = "sa1b") -> None:
    if images < 0:
        raise ValueError(f"images must be >= 0, got {images}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if start_id < 0:
        raise ValueError(f"start_id must be >= 0, got {start_id}")
    if image_size is not None and (len(image_size) != 2 or min(image_size) < _MIN_SIDE):
        raise ValueError(f"image_size (H, W) must be at least {_MIN_SIDE} on each side, got {image_size}")
    if long_side < 2 * _MIN_SIDE:
        raise ValueError(f"long_side must be at least {2 * _MIN_SIDE} pixels, got {long_side}")
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; choose from {', '.join(DOMAINS)}")
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; choose from {', '.join(FORMATS)}")


def _write_star(args: tuple) -> tuple[Path, int]:
    out, image_id, options = args
    return _write_sample(out, image_id, **options)


def make_synthetic(
    out: str | Path,
    images: int = 8,
    *,
    seed: int = 0,
    image_size: tuple[int, int] | None = None,
    long_side: int = DEFAULT_LONG_SIDE,
    domain: str = "scenes",
    start_id: int = 1,
    workers: int = 1,
    progress: bool = False,
    format: str = "sa1b",
) -> list[Path]:
    """Write ``images`` synthetic SA-1B samples to ``out`` (created if missing).

    Args:
        out: folder to write ``sa_{id}.jpg`` + ``sa_{id}.json`` into; files of the same name are replaced.
        images: number of images, with ids ``start_id .. start_id + images - 1``.
        seed: non-negative seed; each image depends only on ``(seed, id, domain)``.
        image_size: (H, W) in pixels for every image; None: SA-1B shapes (``sa1b_size``) at ``long_side``.
        long_side: the longest side of SA-1B-shaped images.
        domain: ``scenes`` (the source domain) or ``microscopy`` (the target domain).
        start_id: the first image id.
        workers: processes drawing images (the bytes do not depend on it).
        progress: a progress bar.
        format: ``sa1b`` (default), or ``labels`` / ``masks``: the instance-label layouts (module docstring).

    Returns:
        The JPEG paths, in id order (each has its ``.json`` beside it, for ``sa1b``).
    """
    size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
    _check(images, seed, size, long_side, start_id, domain, format)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    return [path for path, _ in _write_all(folder, images, start_id, workers, progress,
                                            dict(seed=seed, image_size=size, long_side=long_side, domain=domain,
                                                 format=format))]


def _write_all(folder: Path, images: int, start_id: int, workers: int, progress: bool,
               options: dict) -> list[tuple[Path, int]]:
    jobs = [(folder, start_id + i, options) for i in range(images)]
    bar = tqdm(total=images, desc=f"synth {options['domain']}", unit="image", disable=not progress)
    results = []
    if workers > 1 and images > 1:
        from multiprocessing import get_context

        with get_context("spawn").Pool(workers) as pool:
            for result in pool.imap(_write_star, jobs, chunksize=4):
                results.append(result)
                bar.update()
    else:
        for job in jobs:
            results.append(_write_star(job))
            bar.update()
    bar.close()
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Write synthetic images in SA-1B's format (sa_ID.jpg + sa_ID.json with RLE masks): "
                          "'scenes' is the source domain of the built-in base model, 'microscopy' a shifted "
                          "target domain to fine-tune on.")
    parser.add_argument("out", type=Path, help="folder to write sa_{id}.jpg + sa_{id}.json into")
    parser.add_argument("--images", type=int, default=8, help="number of images (default 8)")
    parser.add_argument("--domain", choices=list(DOMAINS), default="scenes",
                        help="scenes (default: colourful whole/part/sub-part scenes) or microscopy (grey cells)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--long-side", type=int, default=DEFAULT_LONG_SIDE,
                        help=f"longest side of the SA-1B-shaped images (default {DEFAULT_LONG_SIDE}; SA-1B's "
                             "are about 2250)")
    parser.add_argument("--height", type=int, default=None, help="a fixed image height (with --width)")
    parser.add_argument("--width", type=int, default=None, help="a fixed image width (with --height)")
    parser.add_argument("--start-id", type=int, default=1, help="id of the first image (default 1)")
    parser.add_argument("--workers", type=int, default=1, help="processes drawing images (default 1)")
    parser.add_argument("--format", choices=FORMATS, default="sa1b",
                        help="sa1b (default: sa_ID.jpg + sa_ID.json), labels (images/ + labels/ instance maps "
                             "of the visible wholes) or masks (images/ + masks/NAME/NNN.png, every mask)")


def run(args: argparse.Namespace) -> int:
    if (args.height is None) != (args.width is None):
        raise UserError("--height and --width go together (or neither: SA-1B shapes)")
    size = None if args.height is None else (args.height, args.width)
    _check(args.images, args.seed, size, args.long_side, args.start_id, args.domain, args.format)
    args.out.mkdir(parents=True, exist_ok=True)
    results = _write_all(args.out, args.images, args.start_id, args.workers, True,
                         dict(seed=args.seed, image_size=size, long_side=args.long_side, domain=args.domain,
                              format=args.format))
    shape = f"{size[0]}x{size[1]}" if size else f"SA-1B shapes, longest side {args.long_side}"
    layout = "" if args.format == "sa1b" else f" in the {args.format} layout"
    print(f"wrote {args.images} synthetic {args.domain} images{layout} ({shape}, {sum(n for _, n in results)} masks, "
          f"seed {args.seed}) to {args.out}")
    return 0
