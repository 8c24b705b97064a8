"""The shifted target domain of ``lora-sam synth --domain microscopy``: grey, low-contrast cells.

What a user with a microscope brings and the source domain never shows: one grey channel,
contrast of a few grey levels, uneven illumination, blur and noise, and densely packed cells
that touch along shared walls (a Voronoi tessellation of jittered centres, each cell clipped
to a wobbly disc). Masks nest as in the source domain: a **cell** (whole), its **nucleus** and
1 to 3 **organelles** (parts), and the nucleus's 1 or 2 **nucleoli** (sub-parts). Unannotated debris
specks and a dark line along each wall make the walls harder to tell from the texture.
"""

from __future__ import annotations

import numpy as np

from lora_sam.data import shapes
from lora_sam.data.scenes import Scene, visible_masks
from lora_sam.data.shapes import Texture


def _grey(rng: np.random.Generator, level: float, *, scale: float, strength: float = 0.06) -> Texture:
    value = float(np.clip(level, 0.0, 255.0))
    return Texture.draw(rng, np.full(3, value, dtype=np.float32), scale=scale, kinds=("mottle", "flat", "grain"),
                        strength=strength)


def _centres(rng: np.random.Generator, size: tuple[int, int], spacing: float) -> np.ndarray:
    """Jittered grid points (N, 2) (x, y), about ``spacing`` apart, with some cells missing."""
    h, w = size
    ys, xs = np.mgrid[0 : h + spacing : spacing, 0 : w + spacing : spacing * 0.87].astype(np.float32)
    xs = xs + (np.arange(xs.shape[0])[:, None] % 2) * spacing * 0.43
    points = np.stack([xs.ravel(), ys.ravel()], 1)
    points += rng.normal(0.0, 0.18 * spacing, points.shape)
    keep = rng.uniform(size=len(points)) < rng.uniform(0.55, 0.9)
    return points[keep]


def _tessellate(rng: np.random.Generator, size: tuple[int, int], centres: np.ndarray,
                radii: np.ndarray) -> np.ndarray:
    """Label map (H, W): the nearest centre (in radius-scaled distance) where within its wobbly disc, else -1."""
    h, w = size
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    best = np.full(size, np.inf, dtype=np.float32)
    labels = np.full(size, -1, dtype=np.int32)
    for index, ((cx, cy), r) in enumerate(zip(centres, radii)):
        x0, x1 = int(max(cx - 1.6 * r, 0)), int(min(cx + 1.6 * r + 1, w))
        y0, y1 = int(max(cy - 1.6 * r, 0)), int(min(cy + 1.6 * r + 1, h))
        if x0 >= x1 or y0 >= y1:
            continue
        dx, dy = xs[y0:y1, x0:x1] - cx, ys[y0:y1, x0:x1] - cy
        angle = np.arctan2(dy, dx)
        wobble = 1.0 + sum(rng.uniform(0.0, 0.12) * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
        d = np.hypot(dx, dy) / (r * wobble)
        window = best[y0:y1, x0:x1]
        take = (d < 1.0) & (d < window)
        window[take] = d[take]
        labels[y0:y1, x0:x1][take] = index
    return labels


def _organelles(scene: Scene, parent: int, radius: float, level: float, count: int, spread: float) -> None:
    rng = scene.rng
    ys, xs = np.nonzero(scene.nodes[parent].region)
    for _ in range(count):
        if ys.size == 0 or scene.full():
            return
        pick = int(rng.integers(ys.size))
        points = shapes.outline(rng, "blob", (float(xs[pick]), float(ys[pick])), radius * rng.uniform(0.7, 1.3))
        region = shapes.rasterize(points, scene.size) & scene.nodes[parent].region
        scene.close(scene.add(region, _grey(rng, level + rng.normal(0.0, 3.0), scale=spread)))


def draw_cells(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """One target-domain image uint8 (H, W, 3) (grey in all three channels) and its masks."""
    scene = Scene(rng, size)
    spacing = scene.side * rng.uniform(0.14, 0.3)
    centres = _centres(rng, size, spacing)
    radii = spacing * rng.uniform(0.5, 0.75, len(centres))
    cell_labels = _tessellate(rng, size, centres, radii)
    background = rng.uniform(100.0, 160.0)
    sign = 1.0 if rng.uniform() < 0.5 else -1.0  # cells a little brighter or a little darker than the medium
    for index in rng.permutation(len(centres)):
        if scene.full():
            break
        region = cell_labels == index
        if region.sum() < 0.2 * np.pi * radii[index] ** 2:
            continue
        level = background + sign * rng.uniform(4.0, 14.0)
        cell = scene.add(region, _grey(rng, level, scale=spacing / 6), border=max(1, round(spacing / 40)))
        r = radii[index]
        c = (float(centres[index][0] + rng.normal(0.0, 0.1 * r)), float(centres[index][1] + rng.normal(0.0, 0.1 * r)))
        nucleus_region = shapes.rasterize(shapes.outline(rng, "blob", c, r * rng.uniform(0.3, 0.5),
                                                         aspect=rng.uniform(0.6, 1.0)), size) & region
        nucleus_level = level - sign * rng.uniform(8.0, 20.0)
        nucleus = scene.add(nucleus_region, _grey(rng, nucleus_level, scale=spacing / 10))
        _organelles(scene, nucleus, 0.14 * r, nucleus_level - sign * rng.uniform(8.0, 16.0),
                    int(rng.integers(1, 3)), spacing / 12)
        scene.close(nucleus)
        cytoplasm = region & ~shapes.dilate(nucleus_region, max(1, round(r / 12)))
        cell_node = scene.nodes[cell]
        cell_node.region, full_region = cytoplasm, region  # organelles sit in the cytoplasm
        _organelles(scene, cell, 0.13 * r, level + sign * rng.uniform(6.0, 14.0), int(rng.integers(1, 4)),
                    spacing / 12)
        cell_node.region = full_region
        scene.close(cell)
    return _render(scene, background, spacing), visible_masks(scene.nodes, _labels(scene))


def _labels(scene: Scene) -> np.ndarray:
    labels = np.full(scene.size, -1, dtype=np.int32)
    for index, node in enumerate(scene.nodes):
        labels[node.region] = index
    return labels


def _render(scene: Scene, background: float, spacing: float) -> np.ndarray:
    rng, size = scene.rng, scene.size
    labels = _labels(scene)
    image = np.full((*size, 3), background, dtype=np.float32)
    image += 6.0 * shapes.smooth_noise(rng, size, 12)[..., None]
    for index, node in enumerate(scene.nodes):
        visible = labels == index
        node.texture.paint(image, visible, rng)
        if node.border:  # the wall: a dark line
            edge = visible & ~shapes.erode(node.region, node.border)
            image[edge] -= rng.uniform(6.0, 14.0)
    for _ in range(int(rng.integers(5, 30))):  # debris
        c = (rng.uniform(0, size[1]), rng.uniform(0, size[0]))
        speck = shapes.rasterize(shapes.outline(rng, "blob", c, spacing * rng.uniform(0.02, 0.06)), size)
        image[speck] -= rng.uniform(10.0, 30.0)
    light = 1.0 + 0.12 * (shapes.ramp(rng, size) - 0.5) + 0.05 * shapes.smooth_noise(rng, size, 3)
    image *= light[..., None]
    grey = shapes.finish(image[..., :1].repeat(3, axis=2), rng, noise=0.0, blur=rng.uniform(0.6, 1.4))
    noisy = grey.astype(np.float32) + rng.normal(0.0, rng.uniform(2.0, 5.0), size)[..., None]
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
