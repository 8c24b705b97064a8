"""Drawing primitives of the synthetic domains: outlines, rasterising, colours, textures, noise fields.

Every function takes its randomness from the ``numpy.random.Generator`` it is given, so a scene
depends only on the generator's seed. Images are float (H, W, 3) in 0..255 while drawn; masks
are bool (H, W).
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Point = tuple[float, float]
OUTLINES = ("ellipse", "polygon", "rectangle", "superellipse", "blob")
TEXTURES = ("flat", "stripes", "checker", "grain", "shade", "mottle", "dots")


def outline(rng: np.random.Generator, kind: str, center: Point, radius: float, *, aspect: float | None = None,
            angle: float | None = None) -> list[Point]:
    """Vertices (x, y) of a closed shape of about ``radius`` pixels (half its longest extent) around ``center``.

    ``aspect`` (short / long side, 0..1) defaults to a random 0.4..1; ``angle`` to a random rotation.
    """
    aspect = rng.uniform(0.4, 1.0) if aspect is None else aspect
    angle = rng.uniform(0.0, np.pi) if angle is None else angle
    t = np.linspace(0.0, 2.0 * np.pi, 64, endpoint=False)
    if kind == "ellipse":
        x, y = np.cos(t), aspect * np.sin(t)
    elif kind == "rectangle":
        x, y = np.array([-1.0, 1.0, 1.0, -1.0]), aspect * np.array([-1.0, -1.0, 1.0, 1.0])
    elif kind == "superellipse":  # a rounded rectangle
        power = rng.uniform(0.25, 0.6)
        x = np.sign(np.cos(t)) * np.abs(np.cos(t)) ** power
        y = aspect * np.sign(np.sin(t)) * np.abs(np.sin(t)) ** power
    elif kind == "blob":  # a smooth random star-shaped outline
        r = np.ones_like(t)
        for k in range(2, 6):
            r += rng.uniform(0.0, 0.35 / k * 2) * np.cos(k * t + rng.uniform(0.0, 2.0 * np.pi))
        r /= r.max()
        x, y = r * np.cos(t), aspect * r * np.sin(t)
    else:  # a random convex-ish polygon
        n = int(rng.integers(5, 10))
        s = np.sort(rng.uniform(0.0, 2.0 * np.pi, n))
        r = rng.uniform(0.55, 1.0, n)
        x, y = r * np.cos(s), aspect * r * np.sin(s)
    cos, sin = np.cos(angle), np.sin(angle)
    xs = center[0] + radius * (cos * x - sin * y)
    ys = center[1] + radius * (sin * x + cos * y)
    return list(zip(xs.tolist(), ys.tolist()))


def rasterize(points: list[Point], size: tuple[int, int]) -> np.ndarray:
    """The filled polygon ``points`` on an (H, W) canvas."""
    height, width = size
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon(points, fill=1)
    return np.asarray(canvas, dtype=bool)


def stroke(points: list[Point], width: float, size: tuple[int, int]) -> np.ndarray:
    """A polyline through ``points``, ``width`` pixels thick, with round joints."""
    height, width_px = size
    canvas = Image.new("L", (width_px, height), 0)
    draw = ImageDraw.Draw(canvas)
    line_width = max(1, round(width))
    draw.line(points, fill=1, width=line_width, joint="curve")
    for x, y in (points[0], points[-1]):
        r = line_width / 2.0
        draw.ellipse([x - r, y - r, x + r, y + r], fill=1)
    return np.asarray(canvas, dtype=bool)


def curve(rng: np.random.Generator, start: Point, length: float, bend: float, steps: int = 24) -> list[Point]:
    """Points of a smooth random curve of about ``length`` pixels from ``start``; ``bend`` in radians per step."""
    heading = rng.uniform(0.0, 2.0 * np.pi)
    turn = rng.normal(0.0, bend)
    points = [start]
    for _ in range(steps):
        turn = 0.8 * turn + rng.normal(0.0, bend * 0.5)
        heading += turn
        x, y = points[-1]
        points.append((x + np.cos(heading) * length / steps, y + np.sin(heading) * length / steps))
    return points


def _disc(pixels: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """``mask`` grown by ``pixels`` (a disc of that radius)."""
    if pixels <= 0:
        return mask
    return cv2.dilate(mask.astype(np.uint8), _disc(pixels)).astype(bool)


def erode(mask: np.ndarray, pixels: int) -> np.ndarray:
    """``mask`` shrunk by ``pixels`` (a disc of that radius); the frame's edge does not erode it."""
    if pixels <= 0:
        return mask
    return cv2.erode(mask.astype(np.uint8), _disc(pixels), borderType=cv2.BORDER_REPLICATE).astype(bool)


def color(rng: np.random.Generator, hue: float, *, saturation: tuple[float, float] = (0.55, 1.0),
          value: tuple[float, float] = (0.35, 0.95)) -> np.ndarray:
    """An RGB colour (3,) float32 in 0..255 with hue ``hue`` (0..1, wraps)."""
    rgb = colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(*saturation), rng.uniform(*value))
    return 255.0 * np.asarray(rgb, dtype=np.float32)


def smooth_noise(rng: np.random.Generator, size: tuple[int, int], cells: int) -> np.ndarray:
    """Low-frequency noise in about -1..1, (H, W) float32: a random coarse grid upsampled bicubically."""
    height, width = size
    rows = max(2, round(cells * height / max(height, width)))
    cols = max(2, round(cells * width / max(height, width)))
    grid = rng.uniform(-1.0, 1.0, (rows, cols)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC))


def ramp(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A linear gradient 0..1 in a random direction, (H, W) float32."""
    ys, xs = np.mgrid[0 : size[0], 0 : size[1]].astype(np.float32)
    theta = rng.uniform(0.0, 2.0 * np.pi)
    values = np.cos(theta) * xs + np.sin(theta) * ys
    return (values - values.min()) / max(float(np.ptp(values)), 1e-6)


@dataclass
class Texture:
    """A surface: a base colour modulated by a pattern (``TEXTURES``) of random orientation and scale."""

    color: np.ndarray
    kind: str
    angle: float
    scale: float
    phase: float
    strength: float

    @classmethod
    def draw(cls, rng: np.random.Generator, rgb: np.ndarray, *, scale: float, kinds: tuple[str, ...] = TEXTURES,
             strength: float | None = None) -> Texture:
        """A random texture of colour ``rgb``; ``scale`` is the pattern period in pixels, about."""
        kind = kinds[int(rng.integers(len(kinds)))]
        return cls(rgb, kind, rng.uniform(0.0, np.pi), scale * rng.uniform(0.6, 1.6), rng.uniform(0.0, 2.0 * np.pi),
                   rng.uniform(0.12, 0.3) if strength is None else strength)

    def paint(self, image: np.ndarray, pixels: np.ndarray, rng: np.random.Generator) -> None:
        """Fill ``pixels`` (bool (H, W)) of ``image`` with this texture."""
        ys, xs = np.nonzero(pixels)
        if ys.size == 0:
            return
        x, y = xs.astype(np.float32), ys.astype(np.float32)
        u = np.cos(self.angle) * x + np.sin(self.angle) * y
        v = -np.sin(self.angle) * x + np.cos(self.angle) * y
        period = max(self.scale, 2.0)
        if self.kind == "stripes":
            shade = np.sin(2.0 * np.pi * u / period + self.phase)
        elif self.kind == "checker":
            shade = ((np.floor(u / period) + np.floor(v / period)) % 2) * 2.0 - 1.0
        elif self.kind == "grain":
            shade = np.sin(u / period * 3.0 + self.phase) * np.sin(v / (period * 0.7) - self.phase)
        elif self.kind == "shade":
            span = max(float(np.ptp(u)), 1.0)
            shade = 2.0 * (u - u.min()) / span - 1.0
        elif self.kind == "dots":
            shade = (np.sin(2.0 * np.pi * u / period) * np.sin(2.0 * np.pi * v / period) > 0.6) * 2.0 - 1.0
        elif self.kind == "mottle":
            field = smooth_noise(rng, pixels.shape, max(2, round(max(pixels.shape) / (3.0 * period))))
            shade = field[ys, xs]
        else:
            shade = np.zeros_like(x)
        image[ys, xs] = self.color * (1.0 + self.strength * shade[:, None])


def finish(image: np.ndarray, rng: np.random.Generator, *, noise: float, blur: float) -> np.ndarray:
    """Sensor noise (std ``noise``), a Gaussian blur of radius ``blur`` (0: none), clipped to uint8."""
    image = image + rng.normal(0.0, noise, image.shape).astype(np.float32)
    out = Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8))
    if blur > 0:
        out = out.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(out)
