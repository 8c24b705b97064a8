"""The source domain of ``lora-sam synth``: colourful scenes with SA-1B's whole / part / sub-part masks.

A scene is a list of nodes in drawing order. Each node paints its own region; its mask is
what stays visible of it and of its descendants (the nodes drawn right after it, up to
``end``), so a part's mask is a subset of its whole's and a later object hides what is under it,
as in SA-1B. What a scene holds:

- **stuff**: a background of gradients, low-frequency noise and stripes, often split by a
  wavy horizon into two annotated regions (sky and ground);
- **composites** (3 levels): a body with windows in a grid (each with a pane), with spots
  inside (each with a sub-spot), or with parts attached around its outline (a head, limbs);
- **clusters**: touching items of nearly the same colour (stones, cells of a honeycomb),
  sometimes annotated as a group too;
- **thin shapes**: rods, curved strokes, needle-like ellipses and rings;
- **small objects** of a wide range of sizes (log-uniform radius);
- textures (``shapes.TEXTURES``), dark outlines on some objects, uneven lighting, sensor noise
  and, on some images, a slight blur.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lora_sam.data import shapes
from lora_sam.data.shapes import Texture

MAX_NODES = 48


@dataclass
class Node:
    """One drawn region; ``end`` is one past the index of its last descendant."""

    region: np.ndarray
    texture: Texture | None
    border: int = 0
    end: int = 0
    children: list[int] = field(default_factory=list)


class Scene:
    """Nodes in drawing order on an (H, W) canvas, and what each random part of a scene adds."""

    def __init__(self, rng: np.random.Generator, size: tuple[int, int]) -> None:
        self.rng, self.size = rng, size
        self.side = float(min(size))
        self.nodes: list[Node] = []

    def full(self) -> bool:
        return len(self.nodes) >= MAX_NODES

    def texture(self, hue: float, *, scale: float | None = None, **color: tuple[float, float]) -> Texture:
        rgb = shapes.color(self.rng, hue, **color)
        return Texture.draw(self.rng, rgb, scale=scale or self.rng.uniform(4.0, 0.03 * self.side + 6.0))

    def add(self, region: np.ndarray, texture: Texture | None, *, border: int = 0) -> int:
        self.nodes.append(Node(region, texture, border))
        return len(self.nodes) - 1

    def close(self, index: int) -> None:
        self.nodes[index].end = len(self.nodes)

    def center(self, margin: float = 0.05) -> shapes.Point:
        h, w = self.size
        return (self.rng.uniform(margin, 1 - margin) * w, self.rng.uniform(margin, 1 - margin) * h)

    def radius(self, low: float, high: float) -> float:
        """A log-uniform radius between ``low`` and ``high`` times the short side."""
        return float(np.exp(self.rng.uniform(np.log(low), np.log(high)))) * self.side

    def random_outline(self) -> str:
        return shapes.OUTLINES[int(self.rng.integers(len(shapes.OUTLINES)))]


def _stuff(scene: Scene) -> None:
    """A wavy horizon splitting the frame into two annotated regions."""
    h, w = scene.size
    rng = scene.rng
    xs = np.linspace(-0.05 * w, 1.05 * w, 24)
    level = rng.uniform(0.3, 0.7) * h
    ys = level + 0.08 * h * np.cumsum(rng.normal(0.0, 0.35, xs.size))
    ground = shapes.rasterize([*zip(xs.tolist(), ys.tolist()), (1.05 * w, 1.05 * h), (-0.05 * w, 1.05 * h)], scene.size)
    hue = rng.uniform()
    for region, offset in ((~ground, 0.0), (ground, rng.uniform(0.15, 0.5))):
        scene.close(scene.add(region, scene.texture(hue + offset, saturation=(0.1, 0.45), value=(0.4, 0.9))))


def _windows(scene: Scene, body: int, center: shapes.Point, radius: float, aspect: float, angle: float,
             hue: float) -> None:
    """Parts in a grid inside a rectangular body, each with a pane (sub-part) on half of them."""
    rng = scene.rng
    rows, cols = int(rng.integers(1, 4)), int(rng.integers(2, 5))
    cell_u, cell_v = 2.0 * radius / cols, 2.0 * radius * aspect / rows
    cos, sin = np.cos(angle), np.sin(angle)
    window_hue = hue + rng.uniform(0.3, 0.7)
    fill = rng.uniform(0.5, 0.75)
    for i in range(rows):
        for j in range(cols):
            if scene.full():
                return
            u, v = -radius + (j + 0.5) * cell_u, -radius * aspect + (i + 0.5) * cell_v
            c = (center[0] + cos * u - sin * v, center[1] + sin * u + cos * v)
            half = fill * max(cell_u, cell_v) / 2
            points = shapes.outline(rng, "rectangle", c, half, aspect=min(cell_u, cell_v) / max(cell_u, cell_v),
                                    angle=angle if cell_u >= cell_v else angle + np.pi / 2)
            window = scene.add(shapes.rasterize(points, scene.size) & scene.nodes[body].region,
                               scene.texture(window_hue))
            if rng.uniform() < 0.5:
                pane = shapes.rasterize(shapes.outline(rng, "rectangle", c, 0.55 * half, angle=angle), scene.size)
                scene.close(scene.add(pane & scene.nodes[window].region, scene.texture(window_hue + 0.5)))
            scene.close(window)


def _spots(scene: Scene, body: int, radius: float, hue: float, depth: int) -> None:
    """1 to 3 parts inside ``body``, away from its centre when they can be; recursively to ``depth``."""
    rng = scene.rng
    ys, xs = np.nonzero(scene.nodes[body].region)
    if ys.size == 0:
        return
    cy, cx = ys.mean(), xs.mean()
    distance = np.hypot(ys - cy, xs - cx)
    for _ in range(int(rng.integers(1, 4))):
        if scene.full():
            return
        weights = distance + 0.2 * distance.max() + 1e-3
        pick = int(rng.choice(ys.size, p=weights / weights.sum()))
        child_radius = radius * rng.uniform(0.22, 0.45)
        points = shapes.outline(rng, scene.random_outline(), (float(xs[pick]), float(ys[pick])), child_radius)
        region = shapes.rasterize(points, scene.size) & scene.nodes[body].region
        child_hue = hue + rng.uniform(0.2, 0.8)
        child = scene.add(region, scene.texture(child_hue), border=int(rng.uniform() < 0.2))
        if depth > 1:
            _spots(scene, child, child_radius, child_hue, depth - 1)
        scene.close(child)


def _attached(scene: Scene, body: int, center: shapes.Point, radius: float, hue: float) -> None:
    """1 to 3 parts centred on the body's outline (so the whole is the union), each maybe with a spot."""
    rng = scene.rng
    for _ in range(int(rng.integers(1, 4))):
        if scene.full():
            return
        theta = rng.uniform(0.0, 2.0 * np.pi)
        c = (center[0] + 0.85 * radius * np.cos(theta), center[1] + 0.85 * radius * np.sin(theta))
        part_radius = radius * rng.uniform(0.3, 0.55)
        part = scene.add(shapes.rasterize(shapes.outline(rng, scene.random_outline(), c, part_radius), scene.size),
                         scene.texture(hue + rng.uniform(-0.15, 0.15)))
        if rng.uniform() < 0.6:
            _spots(scene, part, part_radius, hue + 0.5, 1)
        scene.close(part)


def _composite(scene: Scene) -> None:
    """A three-level object: a body and its parts and sub-parts."""
    rng = scene.rng
    center, radius, hue = scene.center(), scene.radius(0.1, 0.38), rng.uniform()
    style = ("windows", "spots", "attached")[int(rng.integers(3))]
    kind = "rectangle" if style == "windows" else scene.random_outline()
    aspect, angle = rng.uniform(0.45, 1.0), rng.uniform(0.0, np.pi) if style != "windows" else rng.normal(0.0, 0.15)
    region = shapes.rasterize(shapes.outline(rng, kind, center, radius, aspect=aspect, angle=angle), scene.size)
    body = scene.add(region, scene.texture(hue), border=int(rng.uniform() < 0.3) * max(1, round(radius / 40)))
    if style == "windows":
        _windows(scene, body, center, radius, aspect, angle, hue)
    elif style == "spots":
        _spots(scene, body, radius, hue, 2)
    else:
        _attached(scene, body, center, 0.8 * radius, hue)
    scene.close(body)


def _cluster(scene: Scene) -> None:
    """Touching items of nearly one colour along a random walk; half the time a group mask over them."""
    rng = scene.rng
    count, radius = int(rng.integers(3, 9)), scene.radius(0.04, 0.12)
    hue, value = rng.uniform(), rng.uniform(0.4, 0.85)
    group = scene.add(np.zeros(scene.size, dtype=bool), None) if rng.uniform() < 0.5 else None
    x, y = scene.center(0.15)
    heading = rng.uniform(0.0, 2.0 * np.pi)
    for _ in range(count):
        if scene.full():
            break
        r = radius * rng.uniform(0.8, 1.2)
        item_value = float(np.clip(value + rng.normal(0.0, 0.05), 0.2, 1.0))
        texture = scene.texture(hue + rng.normal(0.0, 0.02), saturation=(0.35, 0.7), value=(item_value, item_value))
        points = shapes.outline(rng, rng.choice(["ellipse", "blob", "superellipse"]), (x, y), r)
        item = scene.add(shapes.rasterize(points, scene.size), texture, border=int(rng.uniform() < 0.4))
        scene.close(item)
        heading += rng.normal(0.0, 0.7)
        x, y = x + 1.6 * r * np.cos(heading), y + 1.6 * r * np.sin(heading)
    if group is not None:
        scene.close(group)


def _thin(scene: Scene) -> None:
    """A rod, a curved stroke, a needle-like ellipse or a ring."""
    rng = scene.rng
    kind = ("rod", "curve", "needle", "ring")[int(rng.integers(4))]
    texture = scene.texture(rng.uniform(), value=(0.2, 0.95))
    width = max(2.0, scene.side * rng.uniform(0.006, 0.03))
    if kind in ("rod", "curve"):
        length = scene.side * rng.uniform(0.25, 0.9)
        points = shapes.curve(rng, scene.center(0.1), length, 0.0 if kind == "rod" else 0.15)
        region = shapes.stroke(points, width, scene.size)
    elif kind == "needle":
        region = shapes.rasterize(shapes.outline(rng, "ellipse", scene.center(), scene.radius(0.1, 0.4),
                                                 aspect=rng.uniform(0.05, 0.2)), scene.size)
    else:
        c, r = scene.center(), scene.radius(0.06, 0.25)
        aspect, angle = rng.uniform(0.6, 1.0), rng.uniform(0.0, np.pi)
        outer = shapes.rasterize(shapes.outline(rng, "ellipse", c, r, aspect=aspect, angle=angle), scene.size)
        inner = shapes.rasterize(shapes.outline(rng, "ellipse", c, r - width, aspect=aspect, angle=angle),
                                 scene.size)
        region = outer & ~inner
    scene.close(scene.add(region, texture))


def _small(scene: Scene) -> None:
    rng = scene.rng
    radius = scene.radius(0.015, 0.1)
    region = shapes.rasterize(shapes.outline(rng, scene.random_outline(), scene.center(), radius), scene.size)
    if rng.uniform() < 0.3:  # a two-level small object
        node = scene.add(region, scene.texture(rng.uniform()))
        _spots(scene, node, radius, rng.uniform(), 1)
        scene.close(node)
    else:
        scene.close(scene.add(region, scene.texture(rng.uniform()), border=int(rng.uniform() < 0.3)))


def _render(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """The image (float (H, W, 3)) and the label map (index of the last node painting each pixel, -1: none)."""
    rng, size = scene.rng, scene.size
    labels = np.full(size, -1, dtype=np.int32)
    for index, node in enumerate(scene.nodes):
        if node.texture is not None:
            labels[node.region] = index
    hue = rng.uniform()
    low, high = shapes.color(rng, hue, saturation=(0.05, 0.3)), shapes.color(rng, hue + 0.5, saturation=(0.05, 0.3))
    image = low + shapes.ramp(rng, size)[..., None] * (high - low) * 0.6
    image += 25.0 * shapes.smooth_noise(rng, size, 6)[..., None]
    for index, node in enumerate(scene.nodes):
        if node.texture is None:
            continue
        visible = labels == index
        node.texture.paint(image, visible, rng)
        if node.border:
            edge = visible & ~shapes.erode(node.region, node.border)
            image[edge] *= 0.55
    light = 1.0 + 0.15 * shapes.smooth_noise(rng, size, 3)
    return image * light[..., None], labels


def draw_scene(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """One source-domain image uint8 (H, W, 3) and its masks (bool (H, W)), wholes before their parts."""
    scene = Scene(rng, size)
    if rng.uniform() < 0.6:
        _stuff(scene)
    makers = ([_composite] * int(rng.integers(2, 5)) + [_cluster] * int(rng.integers(0, 3))
              + [_thin] * int(rng.integers(1, 4)) + [_small] * int(rng.integers(2, 8)))
    for index in rng.permutation(len(makers)):
        if scene.full():
            break
        makers[index](scene)
    image, labels = _render(scene)
    image = shapes.finish(image, rng, noise=rng.uniform(1.5, 5.0),
                          blur=rng.uniform(0.3, 1.2) if rng.uniform() < 0.35 else 0.0)
    return image, visible_masks(scene.nodes, labels)


def visible_masks(nodes: list[Node], labels: np.ndarray) -> list[np.ndarray]:
    """The visible mask of every node and its descendants; tiny, near-whole-image and repeated ones dropped."""
    height, width = labels.shape
    min_area = max(16, int(0.0004 * height * width))
    masks: list[np.ndarray] = []
    for index, node in enumerate(nodes):
        visible = (labels >= index) & (labels < node.end)
        area = int(visible.sum())
        if area < min_area or area > 0.9 * height * width:
            continue
        if any(int(m.sum()) == area and np.array_equal(m, visible) for m in masks):
            continue
        masks.append(visible)
    return masks
