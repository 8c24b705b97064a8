"""The images the app segments: an uploaded file or a sample of a dataset, as one ``LoadedImage``.

An uploaded image is read with PIL (EXIF orientation applied, converted to RGB), shrunk when its
longest side is over ``MAX_SIDE``, and resized into the training frame as the data pipeline does
(``rle.resize_shape``, area averaging, zero padding right and bottom); the 1024 px pipeline gets the
image itself (``sample["original_image"]``). A dataset sample comes from ``open_dataset`` with its
ground-truth masks; the 1024 px pipeline gets its training image upscaled to the original size.
Clicks are taken on ``display``, the image resized to longest side ``DISPLAY_SIDE``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from lora_sam.data.annotations import BadSample, DataError
from lora_sam.data.rle import resize_shape
from lora_sam.evaluation.segmenters import upscaled_image

__all__ = ["DISPLAY_SIDE", "MAX_SIDE", "DatasetImages", "ImageError", "LoadedImage", "from_array",
           "from_sample", "load_image_file"]

DISPLAY_SIDE = 640
"""Longest side, in pixels, of the image shown for clicking and of each model's mask."""
MAX_SIDE = 4096
"""Uploaded images with a longer side are shrunk to it on load (SAM itself works at 1024 px)."""


class ImageError(ValueError):
    """An image that cannot be used, with a message for the page."""


@dataclass
class LoadedImage:
    """One image ready for prompts.

    ``sample``: the dict of ``docs/contracts.md`` at the training resolution (``masks`` (N, H, W), N = 0
    for an upload); ``display``: uint8 (dh, dw, 3) RGB, what the page shows and is clicked on;
    ``key``: a digest of the pixels, so the same image reuses its cached embeddings; ``note``: what was
    done to it on load (shown on the page).
    """

    name: str
    sample: dict[str, Any]
    display: np.ndarray
    key: str
    note: str = ""
    gt_labels: list[str] = field(default_factory=list)

    @property
    def display_size(self) -> tuple[int, int]:
        return int(self.display.shape[0]), int(self.display.shape[1])

    @property
    def input_size(self) -> tuple[int, int]:
        return int(self.sample["input_size"][0]), int(self.sample["input_size"][1])


def _display(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    scale = DISPLAY_SIDE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(rgb, size, interpolation=interpolation))


def _digest(*arrays: np.ndarray) -> str:
    digest = hashlib.blake2b(digest_size=12)
    for array in arrays:
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def from_array(rgb: np.ndarray, image_size: tuple[int, int], name: str = "image", note: str = "", *,
               frame: str) -> LoadedImage:
    """A ``LoadedImage`` of an uint8 (h0, w0, 3) RGB array, with no ground truth, in the model family's ``frame``
    (``SampleOptions.frame``: ``"pad"`` SAM v1, ``"square"`` SAM 2.1; ``ModelBank.frame``)."""
    rgb = np.ascontiguousarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageError(f"{name}: expected uint8 (height, width, 3) RGB pixels, got {rgb.dtype} {rgb.shape}")
    h0, w0 = rgb.shape[:2]
    h, w = resize_shape((h0, w0), image_size, frame)
    small = rgb if (h, w) == (h0, w0) else cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
    image = torch.zeros((3, *image_size), dtype=torch.float32)
    image[:, :h, :w] = torch.from_numpy(small.transpose(2, 0, 1).astype(np.float32))
    sample = {"image": image, "masks": torch.zeros((0, *image_size), dtype=torch.bool),
              "targets": torch.zeros(0, dtype=torch.int64), "input_size": torch.tensor([h, w]),
              "original_size": torch.tensor([h0, w0]), "image_id": name, "original_image": rgb}
    return LoadedImage(name, sample, _display(rgb), _digest(rgb), note)


def load_image_file(path: str | Path, image_size: tuple[int, int], name: str | None = None, *,
                    frame: str) -> LoadedImage:
    """Read an image file (any format PIL reads) into ``frame`` (as ``from_array``); ``ImageError`` with a clear
    message when it cannot be used."""
    path = Path(path)
    name = name or path.name
    try:
        with Image.open(path) as opened:
            opened.draft("RGB", (MAX_SIDE, MAX_SIDE))  # JPEG: decode at a reduced scale when it is huge
            image = ImageOps.exif_transpose(opened).convert("RGB")
    except FileNotFoundError as err:
        raise ImageError(f"{name}: file not found") from err
    except Image.DecompressionBombError as err:
        raise ImageError(f"{name}: too large to decode safely ({err}); shrink it (SAM works at 1024 px: a "
                         f"longest side of {MAX_SIDE} px is plenty) and upload it again") from err
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise ImageError(f"{name}: not an image that can be read (PNG, JPEG, ... expected): {err}") from err
    note = ""
    if max(image.size) > MAX_SIDE:
        before = f"{image.width}x{image.height}"
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        note = f"{name} is {before} px: resized to {image.width}x{image.height} (longest side {MAX_SIDE})"
    return from_array(np.asarray(image), image_size, name, note, frame=frame)


def from_sample(sample: dict[str, Any], name: str) -> LoadedImage:
    """A ``LoadedImage`` of a dataset sample (the dict of ``docs/contracts.md``), its masks as ground truth."""
    display = _display(upscaled_image(sample))
    image = sample["image"].numpy()
    loaded = LoadedImage(name, sample, display, _digest(image, sample["input_size"].numpy()))
    areas = sample["masks"].flatten(1).sum(1).tolist()
    loaded.gt_labels = [f"mask {i} ({area} px)" for i, area in enumerate(areas)]
    return loaded


class DatasetImages:
    """The images of a dataset (``open_dataset(root, image_size=..., frame=...)``), read one at a time.

    Every mask of a sample is kept as ground truth (``masks_per_image`` only caps drawn targets).
    """

    def __init__(self, root: str | Path, image_size: tuple[int, int], limit: int = 500, *, frame: str) -> None:
        from lora_sam.data.loaders import open_dataset, resolve_root, split_folders

        self.root = resolve_root(root)
        # a fixed split (lora-sam nuclei's train/ and val/): the held-out images first, then the training ones
        parts = split_folders(self.root)
        roots = [self.root] if parts is None else [parts[1], parts[0]]
        self.entries: list[tuple[Any, int]] = []  # (dataset, index in it) of each listed image
        self.names: list[str] = []
        for part in roots:
            dataset = open_dataset(part, image_size=tuple(image_size), frame=frame)
            if not hasattr(dataset, "__len__") or not hasattr(dataset, "image_id"):
                raise DataError(f"{part}: the app needs a dataset it can index (an SA-1B folder, a COCO "
                                f"json or a prepared cache), not a stream of .tar shards")
            for i in range(min(limit - len(self.names), len(dataset))):
                self.entries.append((dataset, i))
                self.names.append(str(dataset.image_id(i)))
        if not self.names:
            raise DataError(f"{self.root}: no images")

    def load(self, index: int) -> LoadedImage:
        if not 0 <= index < len(self.names):
            raise ImageError(f"no image {index} in {self.root} ({len(self.names)} images)")
        dataset, position = self.entries[index]
        sample = dataset[position]
        if isinstance(sample, BadSample):
            raise ImageError(f"{self.names[index]}: cannot be used ({sample})")
        return from_sample(sample, self.names[index])
