"""Instance-label folders: images with an integer instance map each, or with one PNG per instance.

Two layouts (``instance_layout`` tells them apart; ``labels/`` wins when both folders exist)::

    ROOT/images/NAME.{png,jpg,jpeg,tif,tiff}    grey or RGB(A), 8 or 16 bit
    ROOT/labels/NAME.{png,tif,tiff}             "labels": integer map of the image's size,
                                                0 = background, every other value one instance
    ROOT/masks/NAME/*.png                       "masks": one binary PNG per instance (nonzero =
                                                inside); masks may overlap and nest

PNGs are read with Pillow (label maps: mode L, I;16 or I), TIFFs with ``tifffile``. 16-bit
images are scaled to 8 bit by 255 / 65535. Image ids are the NAMEs; masks come in increasing
label value (``labels``) or natural file-name order (``masks``). Samples are those of
``docs/contracts.md``, filtered and drawn by ``samples.finish`` exactly as for SA-1B folders.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import tifffile
from PIL import Image

from lora_sam.data import rle
from lora_sam.data.annotations import Problem, errors
from lora_sam.data.datasets import SampleDataset
from lora_sam.data.samples import Raw

Layout = Literal["labels", "masks"]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
LABEL_SUFFIXES = (".png", ".tif", ".tiff")
_TIFF = (".tif", ".tiff")
_LABEL_MODES = ("1", "L", "I", "I;16", "I;16L", "I;16B", "I;16N")
_COLOUR_MODES = ("CMYK", "YCbCr", "LAB", "HSV", "P", "PA", "RGBX", "RGBa", "La")
_HOW_TO_LABEL = "0 = background, one positive integer per instance"


def instance_layout(root: Path) -> Layout | None:
    """``"labels"`` for ``root/images`` + ``root/labels``, ``"masks"`` for ``images`` + ``masks``, else ``None``."""
    if not (root / "images").is_dir():
        return None
    if (root / "labels").is_dir():
        return "labels"
    return "masks" if (root / "masks").is_dir() else None


def natural_key(name: str) -> list[Any]:
    """Sort key that orders ``img_2`` before ``img_10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _decode(path: Path, *, colour: bool, draft_into: tuple[tuple[int, int], str] | None = None
            ) -> tuple[np.ndarray | None, tuple[int, int] | None, str, list[Problem]]:
    """The pixel array of an image file, its (h0, w0) from the header (TIFF: ``None``), its mode, problems.

    ``colour`` converts palette, CMYK and similar Pillow modes to RGB(A); with ``draft_into`` = ((H, W), frame)
    a JPEG is decoded at the smallest DCT scale still at least its size resized into (H, W) (``rle.resize_shape``).
    """
    try:
        if path.suffix.lower() in _TIFF:
            return np.asarray(tifffile.imread(path)), None, "TIFF", []
        with Image.open(path) as image:
            size, mode = (image.height, image.width), image.mode
            if draft_into is not None and image.format == "JPEG":
                target = rle.resize_shape(size, *draft_into)
                image.draft(mode, (target[1], target[0]))
            if colour and mode in _COLOUR_MODES:
                image = image.convert("RGBA" if "A" in mode or "transparency" in image.info else "RGB")
            return np.asarray(image), size, mode, []
    except FileNotFoundError:
        return None, None, "", [Problem(str(path), "", "file not found")]
    except Exception as exc:  # any decoder failure is a problem of this file, never a traceback
        message = f"not a readable image ({type(exc).__name__}: {exc}); re-export or remove the file"
        return None, None, "", [Problem(str(path), "", message)]


def _channels(pixels: np.ndarray, path: str) -> tuple[np.ndarray | None, list[Problem]]:
    """(h, w, 3) of a grey (h, w), (h, w, 1), grey + alpha, RGB or RGBA array (TIFF planes first too)."""
    if pixels.ndim == 3 and pixels.shape[0] in (3, 4) and pixels.shape[2] > 4:
        pixels = np.moveaxis(pixels, 0, -1)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 2, 3, 4):
        message = f"array of shape {pixels.shape}; expected a grey or RGB(A) image (H, W) or (H, W, 1..4)"
        return None, [Problem(path, "shape", message)]
    colours = pixels[..., :1] if pixels.shape[2] <= 2 else pixels[..., :3]
    return np.repeat(colours, 3, axis=2) if colours.shape[2] == 1 else colours, []


def _to_uint8(pixels: np.ndarray, path: str) -> tuple[np.ndarray | None, list[Problem]]:
    """8-bit pixels as they are, 16-bit ones (or 32-bit ints within 0..65535) scaled by 255 / 65535."""
    if pixels.dtype == np.uint8:
        return pixels, []
    if pixels.dtype == bool:
        return pixels.astype(np.uint8) * 255, []
    wide = np.issubdtype(pixels.dtype, np.integer) and pixels.dtype.itemsize > 1
    if not wide or (pixels.size and (pixels.min() < 0 or pixels.max() > 65535)):
        message = f"{pixels.dtype} pixels; save the image with 8- or 16-bit unsigned integers"
        return None, [Problem(path, "dtype", message)]
    problems = []
    if pixels.size and pixels.max() < 4096:
        problems.append(Problem(path, "values", (
            f"16-bit image with values up to {pixels.max()} only, nearly black once scaled by 255 / 65535 to "
            "8 bit; stretch it to the 16-bit range or save it as 8 bit"), "warning"))
    scaled = (pixels.astype(np.uint32) * 255 + 32767) // 65535
    return scaled.astype(np.uint8), problems


def read_image_file(path: Path, image_size: tuple[int, int], *, frame: str, reduce: bool = True
                    ) -> tuple[np.ndarray | None, tuple[int, int] | None, list[Problem]]:
    """The RGB image resized into ``image_size`` (uint8 (h, w, 3)), its original (h0, w0), and problems.

    Grey images are repeated into three channels and alpha is dropped, without a warning (both are
    ordinary in these layouts). With ``reduce`` a JPEG is decoded at a reduced scale first, as in
    ``samples.read_image``.
    """
    pixels, size, _, problems = _decode(path, colour=True, draft_into=(image_size, frame) if reduce else None)
    if pixels is None:
        return None, None, problems
    rgb, found = _channels(pixels, str(path))
    if rgb is not None:
        rgb, more = _to_uint8(rgb, str(path))
        found += more
    if rgb is None:
        return None, size, problems + found
    size = size or rgb.shape[:2]
    target = rle.resize_shape(size, image_size, frame)
    if rgb.shape[:2] != target:
        rgb = cv2.resize(rgb, (target[1], target[0]), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(rgb), size, problems + found


def _integer_map(values: np.ndarray, mode: str, path: str) -> tuple[np.ndarray | None, list[Problem]]:
    """The label array as integers, or the reason it is not an instance map."""
    if mode != "TIFF" and mode not in _LABEL_MODES:
        message = (f"{mode} image; a label map is a single-channel integer image (PNG mode L, I;16 or I, "
                   f"or an integer TIFF) with {_HOW_TO_LABEL}")
        return None, [Problem(path, "mode", message)]
    values = values.squeeze() if values.ndim > 2 else values
    if values.ndim != 2:
        message = f"array of shape {values.shape}; a label map is one plane (H, W) with {_HOW_TO_LABEL}"
        return None, [Problem(path, "shape", message)]
    if values.dtype == bool or np.issubdtype(values.dtype, np.integer):
        return values, []
    if not np.issubdtype(values.dtype, np.floating):
        return None, [Problem(path, "dtype", f"{values.dtype} values; save an integer map with {_HOW_TO_LABEL}")]
    whole = np.isfinite(values) & (values == np.round(values))
    if not whole.all():
        row, col = (int(v) for v in np.argwhere(~whole)[0])
        message = (f"{values.dtype} values with fractions ({values[row, col]} at row {row}, column {col}): "
                   f"not an instance map; save integer ids ({_HOW_TO_LABEL})")
        return None, [Problem(path, "dtype", message)]
    message = f"{values.dtype} label map of whole numbers, read as integers; save it as an integer TIFF"
    return values.astype(np.int64), [Problem(path, "dtype", message, "warning")]


def read_label_map(path: Path, size: tuple[int, int] | None, image_path: str
                   ) -> tuple[np.ndarray | None, list[Problem]]:
    """The integer instance map (h0, w0) of a label file, checked against the image's ``size``; problems."""
    values, _, mode, problems = _decode(path, colour=False)
    if values is None:
        return None, problems
    labels, problems = _integer_map(values, mode, str(path))
    if labels is None:
        return None, problems
    if labels.size and labels.min() < 0:
        message = f"negative values (min {labels.min()}); use {_HOW_TO_LABEL}"
        return None, [*problems, Problem(str(path), "values", message)]
    if not labels.any():
        message = f"no instance: every pixel is 0 (background), no masks to train on; label the instances ({_HOW_TO_LABEL}) or remove the image and its label"
        return None, [*problems, Problem(str(path), "values", message)]
    if size is not None and labels.shape != size:
        (h, w), (h0, w0) = labels.shape, size
        message = f"label map is {w}x{h} but the image {Path(image_path).name} is {w0}x{h0}; it must have the image's size"
        return None, [*problems, Problem(str(path), "size", message)]
    return labels, problems


def read_mask_file(path: Path, size: tuple[int, int] | None, *, check: bool
                   ) -> tuple[np.ndarray | None, list[Problem]]:
    """The bool (h0, w0) mask of one instance PNG (nonzero = inside), checked against the image's ``size``.

    Colour masks count a pixel as inside when any colour channel is nonzero (a warning). ``check``
    also warns about empty masks and masks of more than two values.
    """
    values, _, mode, problems = _decode(path, colour=True)
    if values is None:
        return None, problems
    if values.ndim == 3:
        values = values[..., : 1 if values.shape[2] <= 2 else 3].max(axis=2)
        message = f"{mode} mask, read as nonzero in any colour channel; save it as a single-channel PNG"
        problems.append(Problem(str(path), "mode", message, "warning"))
    if values.ndim != 2:
        return None, [*problems, Problem(str(path), "shape", f"array of shape {values.shape}; expected (H, W)")]
    if size is not None and values.shape != size:
        (h, w), (h0, w0) = values.shape, size
        message = f"mask is {w}x{h} but its image is {w0}x{h0}; it must have the image's size"
        return None, [*problems, Problem(str(path), "size", message)]
    if check and not values.any():
        problems.append(Problem(str(path), "values", "empty mask (every pixel 0)", "warning"))
    elif check and len(distinct := np.unique(values)) > 2:
        message = f"{len(distinct)} distinct values, read as one mask (nonzero = inside); is it a label map?"
        problems.append(Problem(str(path), "values", message, "warning"))
    return values != 0, problems


def _grid(size: tuple[int, int], input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    return rle.nearest_grid(size[0], input_size[0]), rle.nearest_grid(size[1], input_size[1])


def label_masks(labels: np.ndarray, input_size: tuple[int, int], image_size: tuple[int, int]
                ) -> tuple[np.ndarray, np.ndarray]:
    """Masks bool (M, H, W) of each nonzero value in increasing order, resized nearest to ``input_size``
    (the grid of ``rle.nearest_grid``) and zero padded to ``image_size``; area fractions float64 (M,)."""
    if labels.max() <= 65535:  # bincount is far faster than unique on a full-resolution map
        counts = np.bincount(labels.ravel().astype(np.intp, copy=False))
        ids = np.flatnonzero(counts)
        counts = counts[ids]
    else:
        ids, counts = np.unique(labels, return_counts=True)
    counts, ids = counts[ids != 0], ids[ids != 0]
    rows, cols = _grid(labels.shape, input_size)
    small = labels[np.ix_(rows, cols)]
    masks = np.zeros((len(ids), *image_size), dtype=bool)
    masks[:, : input_size[0], : input_size[1]] = small[None] == ids[:, None, None]
    return masks, counts / float(labels.size)


def file_masks(full: list[np.ndarray], input_size: tuple[int, int], image_size: tuple[int, int]
               ) -> tuple[np.ndarray, np.ndarray]:
    """``label_masks`` for full-resolution bool masks (h0, w0), one per instance."""
    masks = np.zeros((len(full), *image_size), dtype=bool)
    if not full:
        return masks, np.zeros(0)
    rows, cols = _grid(full[0].shape, input_size)
    for out, mask in zip(masks, full):
        out[: input_size[0], : input_size[1]] = mask[np.ix_(rows, cols)]
    return masks, np.array([np.count_nonzero(m) for m in full]) / float(full[0].size)


@dataclass(frozen=True)
class Item:
    """One NAME of an instance-label folder: its image and label file or mask folder (``None``: missing)."""

    name: str
    image: Path | None
    annotation: Path | None
    duplicates: tuple[Path, ...] = ()


def _by_name(folder: Path, suffixes: tuple[str, ...], strays: list[Problem]) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_file() and path.suffix.lower() in suffixes:
            found.setdefault(path.stem, []).append(path)
        else:
            message = f"not a {', '.join(suffixes)} file; ignored"
            strays.append(Problem(str(path), "", message, "warning"))
    return found


def scan(root: Path, layout: Layout) -> tuple[list[Item], list[Problem]]:
    """The items of an instance-label folder by NAME (natural order) and the problems of stray files."""
    strays: list[Problem] = []
    images = _by_name(root / "images", IMAGE_SUFFIXES, strays)
    if layout == "labels":
        annotations = _by_name(root / "labels", LABEL_SUFFIXES, strays)
    else:
        annotations = {}
        for path in sorted((root / "masks").iterdir()):
            if path.is_dir():
                annotations[path.name] = [path]
            elif not path.name.startswith("."):
                strays.append(Problem(str(path), "", "not a folder of mask PNGs (masks/NAME/*.png); ignored", "warning"))
    items = []
    for name in sorted(images.keys() | annotations.keys(), key=natural_key):
        paths, labels = images.get(name, []), annotations.get(name, [])
        items.append(Item(name, paths[0] if paths else None, labels[0] if labels else None,
                          tuple(paths[1:] + labels[1:])))
    return items, strays


_PARTNER = {"labels": "label", "masks": "mask folder"}


def _pairing_problems(item: Item, layout: Layout) -> list[Problem]:
    """The missing or doubled files of one NAME."""
    problems = []
    if item.image is None:
        message = f"no image images/{item.name}{{{','.join(IMAGE_SUFFIXES)}}}; add it or remove this {_PARTNER[layout]}"
        problems.append(Problem(str(item.annotation), "image", message))
    elif item.annotation is None:
        wanted = f"labels/{item.name}{{{','.join(LABEL_SUFFIXES)}}}" if layout == "labels" else f"masks/{item.name}/*.png"
        problems.append(Problem(str(item.image), layout, f"no {wanted}; add it or remove the image"))
    for path in item.duplicates:
        message = f"another file named {item.name} ({path.parent.name}/{path.name}); keep one of them"
        problems.append(Problem(str(item.annotation or item.image), "name", message))
    return problems


def _read_mask_folder(folder: Path, size: tuple[int, int] | None, *, check: bool
                      ) -> tuple[list[np.ndarray] | None, list[Problem]]:
    """The full-resolution masks of ``masks/NAME/*.png`` in natural order, and their problems."""
    try:
        files = sorted((p for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith(".")),
                       key=lambda p: natural_key(p.name))
    except OSError as exc:
        return None, [Problem(str(folder), "", f"cannot be listed ({exc})")]
    if not files:
        message = "empty: no *.png masks to train on; add one binary PNG per instance or remove the image"
        return None, [Problem(str(folder), "masks", message)]
    masks, problems = [], []
    for path in files:
        mask, found = read_mask_file(path, size, check=check)
        masks.append(mask)
        problems += found
    return (None if any(m is None for m in masks) else masks), problems


class InstanceFolder(SampleDataset):
    """An instance-label folder (see the module docstring) as a ``SampleDataset``; ids are the NAMEs.

    Args:
        root: the folder holding ``images/`` and ``labels/`` or ``masks/``.
        layout: ``"labels"`` or ``"masks"`` (default: ``instance_layout(root)``).
        options: see ``SampleDataset`` (``fast`` only decides whether JPEGs decode at a reduced scale).

    A NAME with only an image, or only a label, is an item whose missing partner is reported;
    ``file_problems`` lists stray files (warnings).
    """

    def __init__(self, root: str | Path, layout: Layout | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.root = Path(root)
        found = instance_layout(self.root)
        if found is None:
            raise FileNotFoundError(f"{self.root}: expected the folders images/ and labels/ (or masks/) in it")
        self.layout: Layout = layout or found
        self.items, self.file_problems = scan(self.root, self.layout)
        if not self.items:
            raise FileNotFoundError(f"{self.root}: no files in images/ or {self.layout}/")

    def path(self, index: int) -> str:
        item = self.items[index]
        return str(item.annotation or item.image)

    def image_id(self, index: int) -> str:
        return self.items[index].name

    def read(self, index: int) -> tuple[Raw | None, list[Problem]]:
        item: Item = self.items[index]
        problems = _pairing_problems(item, self.layout)
        image = size = None
        if item.image is not None:
            image, size, found = read_image_file(item.image, self.options.image_size, reduce=self.options.fast,
                                                 frame=self.options.frame)
            problems += found
        if item.annotation is None:
            return None, problems
        if self.layout == "labels":
            source, found = read_label_map(item.annotation, size, str(item.image))
        else:
            source, found = _read_mask_folder(item.annotation, size, check=self.check_fields)
        problems += found
        if image is None or size is None or source is None or errors(problems):
            return None, problems
        make = label_masks if isinstance(source, np.ndarray) else file_masks
        masks, fractions = make(source, image.shape[:2], self.options.image_size)
        return Raw(image, masks, fractions, size, item.name, str(item.annotation)), problems
