"""Synthetic data in the exact SA-1B format: ``sa_{id}.jpg`` (RGB JPEG) + ``sa_{id}.json``.

Each image has a textured background (low-frequency noise, a gradient, stripes) and a few
objects drawn as ellipses, polygons and rectangles, each with its own colour and texture.
Most objects contain parts, which contain sub-parts, so masks nest three levels deep, as
in SA-1B (a building, its windows, their panes); a few unrelated objects have no parts.
Objects drawn later hide what is under them; every mask is the visible region of its shape
and everything inside it, so a part's mask is always a subset of its object's mask.

The JSON matches a real SA-1B file (one line)::

    {"image": {"image_id", "width", "height", "file_name"},
     "annotations": [{"bbox": XYWH (w, h one less than pycocotools.mask.toBbox, as in SA-1B),
                      "area": int, "segmentation": {"size": [h, w], "counts": compressed RLE str},
                      "predicted_iou", "point_coords": [[x, y]] (a pixel on the mask),
                      "crop_box": [0, 0, w, h], "id": int, "stability_score"}]}

Every image depends only on ``(seed, image_id)``: the same arguments give identical bytes.
"""

from __future__ import annotations

import argparse
import colorsys
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from tqdm import tqdm

_SHAPES = ("ellipse", "polygon", "rectangle")
_TEXTURES = ("flat", "stripes", "checker", "grain", "shade")
_MAX_MASKS = 40
_MIN_SIDE = 32


@dataclass
class _Node:
    """One shape in drawing order; ``end`` is one past the index of its last descendant."""

    region: np.ndarray
    color: tuple[float, float, float]
    texture: str
    texture_params: tuple[float, float, float]
    end: int = 0


def _polygon_points(
    rng: np.random.Generator, shape: str, center: tuple[float, float], radius: float
) -> list[tuple[float, float]]:
    """Vertices (x, y) of a shape of about ``radius`` pixels around ``center``."""
    angle = rng.uniform(0.0, np.pi)
    if shape == "ellipse":
        t = np.linspace(0.0, 2.0 * np.pi, 48, endpoint=False)
        x, y = radius * np.cos(t), radius * rng.uniform(0.45, 1.0) * np.sin(t)
    elif shape == "rectangle":
        half_w, half_h = radius, radius * rng.uniform(0.4, 1.0)
        x = np.array([-half_w, half_w, half_w, -half_w])
        y = np.array([-half_h, -half_h, half_h, half_h])
    else:
        n = int(rng.integers(5, 10))
        t = np.sort(rng.uniform(0.0, 2.0 * np.pi, n))
        r = radius * rng.uniform(0.55, 1.0, n)
        x, y = r * np.cos(t), r * np.sin(t)
    cos, sin = np.cos(angle), np.sin(angle)
    xs = center[0] + cos * x - sin * y
    ys = center[1] + sin * x + cos * y
    return list(zip(xs.tolist(), ys.tolist()))


def _rasterize(points: list[tuple[float, float]], height: int, width: int) -> np.ndarray:
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon(points, fill=1)
    return np.asarray(canvas, dtype=bool)


def _color(
    rng: np.random.Generator, hue: float, *, saturation: tuple[float, float]
) -> tuple[float, float, float]:
    """An RGB colour in 0..255 with the given hue (0..1)."""
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(*saturation), rng.uniform(0.45, 0.95))
    return 255.0 * r, 255.0 * g, 255.0 * b


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency noise in -1..1, (H, W): a random coarse grid upsampled bilinearly."""
    grid = rng.uniform(-1.0, 1.0, (cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((width, height), Image.Resampling.BILINEAR))


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A muted textured background, float (H, W, 3) in 0..255."""
    hue = rng.uniform()
    base = np.array(_color(rng, hue, saturation=(0.05, 0.3)), dtype=np.float32)
    tint = np.array(_color(rng, hue + rng.uniform(0.2, 0.8), saturation=(0.05, 0.3)), dtype=np.float32)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    theta = rng.uniform(0.0, 2.0 * np.pi)
    ramp = (np.cos(theta) * xs + np.sin(theta) * ys) / max(height, width)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    image = base + ramp[..., None] * (tint - base) * 0.6
    phi = rng.uniform(0.0, np.pi)
    period = rng.uniform(12.0, 40.0)
    stripes = np.sin(2.0 * np.pi * (np.cos(phi) * xs + np.sin(phi) * ys) / period)
    image += (12.0 * stripes + 25.0 * _smooth_noise(rng, height, width, 6))[..., None]
    return image


def _paint(image: np.ndarray, node: _Node, pixels: np.ndarray) -> None:
    """Fill ``pixels`` (bool (H, W)) of ``image`` with the node's colour and texture."""
    ys, xs = np.nonzero(pixels)
    if ys.size == 0:
        return
    a, b, c = node.texture_params
    x, y = xs.astype(np.float32), ys.astype(np.float32)
    if node.texture == "stripes":
        shade = 0.22 * np.sin(2.0 * np.pi * (np.cos(a) * x + np.sin(a) * y) / b)
    elif node.texture == "checker":
        shade = 0.18 * (((xs // int(b)) + (ys // int(b))) % 2 * 2 - 1)
    elif node.texture == "grain":
        shade = 0.12 * np.sin(x / b + c) * np.sin(y / (b * 0.7) - c)
    elif node.texture == "shade":
        span = max(float(np.ptp(x)), float(np.ptp(y)), 1.0)
        shade = 0.3 * ((np.cos(a) * (x - x.mean()) + np.sin(a) * (y - y.mean())) / span)
    else:
        shade = np.zeros_like(x)
    image[ys, xs] = np.clip(np.asarray(node.color, dtype=np.float32) * (1.0 + shade[:, None]), 0.0, 255.0)


def _new_node(rng: np.random.Generator, region: np.ndarray, hue: float) -> _Node:
    texture = _TEXTURES[int(rng.integers(len(_TEXTURES)))]
    params = (rng.uniform(0.0, np.pi), rng.uniform(5.0, 14.0), rng.uniform(0.0, 2.0 * np.pi))
    return _Node(region, _color(rng, hue, saturation=(0.55, 1.0)), texture, params)


def _add_tree(
    rng: np.random.Generator, nodes: list[_Node], height: int, width: int, *, radius: float, depth: int
) -> None:
    """Append an object and (for ``depth`` > 1) its parts and sub-parts, in drawing order."""
    center = (rng.uniform(0.05, 0.95) * width, rng.uniform(0.05, 0.95) * height)
    shape = _SHAPES[int(rng.integers(len(_SHAPES)))]
    region = _rasterize(_polygon_points(rng, shape, center, radius), height, width)
    _add_subtree(rng, nodes, region, rng.uniform(), radius, depth, height, width)


def _add_subtree(
    rng: np.random.Generator,
    nodes: list[_Node],
    region: np.ndarray,
    hue: float,
    radius: float,
    depth: int,
    height: int,
    width: int,
) -> None:
    index = len(nodes)
    nodes.append(_new_node(rng, region, hue))
    if depth > 1:
        ys, xs = np.nonzero(region)
        count = int(rng.integers(1, 4)) if depth == 3 else int(rng.integers(0, 3))
        for _ in range(count):
            if ys.size == 0 or len(nodes) >= _MAX_MASKS:
                break
            pick = int(rng.integers(ys.size))
            child_radius = radius * rng.uniform(0.3, 0.5)
            shape = _SHAPES[int(rng.integers(len(_SHAPES)))]
            points = _polygon_points(rng, shape, (float(xs[pick]), float(ys[pick])), child_radius)
            child = _rasterize(points, height, width) & region
            child_hue = hue + rng.uniform(0.2, 0.8)
            _add_subtree(rng, nodes, child, child_hue, child_radius, depth - 1, height, width)
    nodes[index].end = len(nodes)


def _scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Draw one image; returns the image uint8 (H, W, 3) and visible masks bool (H, W) in drawing order."""
    side = min(height, width)
    nodes: list[_Node] = []
    kinds = ["tree"] * int(rng.integers(3, 6)) + ["single"] * int(rng.integers(2, 7))
    for kind in rng.permutation(kinds):
        if len(nodes) >= _MAX_MASKS:
            break
        if kind == "tree":
            _add_tree(rng, nodes, height, width, radius=side * rng.uniform(0.14, 0.3), depth=3)
        else:
            _add_tree(rng, nodes, height, width, radius=side * rng.uniform(0.05, 0.12), depth=1)
    labels = np.full((height, width), -1, dtype=np.int32)
    for index, node in enumerate(nodes):
        labels[node.region] = index
    image = _background(rng, height, width)
    for index, node in enumerate(nodes):
        _paint(image, node, labels == index)
    image += rng.normal(0.0, 3.0, image.shape).astype(np.float32)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    min_area = max(16, int(0.0005 * height * width))
    masks: list[np.ndarray] = []
    for index, node in enumerate(nodes):
        visible = (labels >= index) & (labels < node.end)
        area = int(visible.sum())
        if area < min_area or area > 0.9 * height * width:
            continue
        if any(int(m.sum()) == area and np.array_equal(m, visible) for m in masks):
            continue
        masks.append(visible)
    return image, masks


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


def _write_sample(out: Path, image_id: int, *, seed: int, image_size: tuple[int, int]) -> tuple[Path, int]:
    """Write ``sa_{image_id}.jpg`` and ``.json``; returns the image path and the number of masks."""
    height, width = image_size
    rng = np.random.default_rng([seed, image_id])
    image, masks = _scene(rng, height, width)
    name = f"sa_{image_id}"
    image_path = out / f"{name}.jpg"
    Image.fromarray(image).save(image_path, format="JPEG", quality=92)
    record = {
        "image": {"image_id": image_id, "width": width, "height": height, "file_name": image_path.name},
        "annotations": [_annotation(rng, m, image_id * 1000 + i) for i, m in enumerate(masks)],
    }
    (out / f"{name}.json").write_text(json.dumps(record))
    return image_path, len(masks)


def _check(images: int, seed: int, image_size: tuple[int, int], start_id: int) -> None:
    if images < 0:
        raise ValueError(f"images must be >= 0, got {images}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if start_id < 0:
        raise ValueError(f"start_id must be >= 0, got {start_id}")
    if min(image_size) < _MIN_SIDE:
        raise ValueError(f"image_size (H, W) must be at least {_MIN_SIDE} on each side, got {image_size}")


def make_synthetic(
    out: str | Path,
    images: int = 8,
    *,
    seed: int = 0,
    image_size: tuple[int, int] = (480, 640),
    start_id: int = 1,
) -> list[Path]:
    """Write ``images`` synthetic SA-1B samples to ``out`` (created if missing).

    Args:
        out: folder to write ``sa_{id}.jpg`` + ``sa_{id}.json`` into; files of the same name are replaced.
        images: number of images, with ids ``start_id .. start_id + images - 1``.
        seed: non-negative seed; each image depends only on ``(seed, id)``.
        image_size: (H, W) in pixels.
        start_id: the first image id.

    Returns:
        The JPEG paths, in id order (each has its ``.json`` beside it).
    """
    _check(images, seed, image_size, start_id)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    size = (int(image_size[0]), int(image_size[1]))
    return [_write_sample(folder, start_id + i, seed=seed, image_size=size)[0] for i in range(images)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="folder to write sa_{id}.jpg + sa_{id}.json into")
    parser.add_argument("--images", type=int, default=8, help="number of images (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--height", type=int, default=480, help="image height in pixels (default 480)")
    parser.add_argument("--width", type=int, default=640, help="image width in pixels (default 640)")
    parser.add_argument("--start-id", type=int, default=1, help="id of the first image (default 1)")


def run(args: argparse.Namespace) -> int:
    size = (args.height, args.width)
    _check(args.images, args.seed, size, args.start_id)
    args.out.mkdir(parents=True, exist_ok=True)
    total = 0
    for i in tqdm(range(args.images), desc="synth", unit="image"):
        total += _write_sample(args.out, args.start_id + i, seed=args.seed, image_size=size)[1]
    print(
        f"wrote {args.images} synthetic SA-1B images ({args.height}x{args.width}, {total} masks, "
        f"seed {args.seed}) to {args.out}"
    )
    return 0
