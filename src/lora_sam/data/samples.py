"""One training sample: read an image and its masks at training resolution, pick targets, collate.

The sample and batch formats are those of ``docs/contracts.md``. Images are resized by
``s = min(H / h0, W / w0)`` to ``input_size`` = (h, w), placed top-left and zero padded to
``image_size`` = (H, W) (SAM v1's frame), or with ``frame="square"`` resized to fill (H, W) (SAM 2's:
``input_size`` is then (H, W)); masks are resized nearest on the grid of ``rle.nearest_grid``.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from lora_sam.data import rle
from lora_sam.data.annotations import BadSample, ImageAnnotations, Problem, decode_segments, errors
from lora_sam.models.checkpoints import DEFAULT_IMAGE_SIZE, check_image_size
from lora_sam.settings import MASKS_PER_IMAGE

_WARNED: set[str] = set()


@dataclass(frozen=True)
class SampleOptions:
    """How samples are made.

    Args:
        image_size: training (H, W), sides multiples of 16.
        masks_per_image: K, the most targets drawn per image and step.
        max_mask_fraction: masks covering more of the original image are dropped (SAM drops > 0.9).
        min_mask_pixels: masks with fewer pixels at training resolution are dropped.
        seed: seed of the target draws, which depend only on (seed, epoch, image_id).
        fast: read masks straight from the RLE runs and decode JPEGs at reduced size; ``False``
            decodes every full-resolution image and mask first (the slow reference path).
        frame: ``"pad"`` keeps the aspect ratio and pads (SAM v1); ``"square"`` fills the frame, each axis
            scaled on its own (SAM 2; ``lora_sam.data.rle.FRAMES``). ``LoRASAM`` checks it fits its model.
    """

    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE
    masks_per_image: int = MASKS_PER_IMAGE
    max_mask_fraction: float = 0.9
    min_mask_pixels: int = 16
    seed: int = 0
    fast: bool = True
    frame: str = "pad"

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", check_image_size(self.image_size))
        if self.frame not in rle.FRAMES:
            raise ValueError(f"frame must be one of {', '.join(rle.FRAMES)}, got {self.frame!r}")
        if self.masks_per_image < 1:
            raise ValueError(f"masks_per_image must be at least 1, got {self.masks_per_image}")
        if not 0.0 < self.max_mask_fraction <= 1.0:
            raise ValueError(f"max_mask_fraction must be in (0, 1], got {self.max_mask_fraction}")


@dataclass
class Raw:
    """Everything of one image at training resolution, before the masks are filtered.

    ``image`` uint8 (h, w, 3) RGB, (h, w) the input size; ``masks`` bool (M, H, W), every
    decodable mask at training size (H, W), zero padded right and bottom;
    ``fractions`` float64 (M,) each mask's area over the original image's; ``original_size`` (h0, w0).
    """

    image: np.ndarray
    masks: np.ndarray
    fractions: np.ndarray
    original_size: tuple[int, int]
    image_id: str
    path: str


def read_image(
    source: Path | bytes, path: str, image_size: tuple[int, int], *, frame: str, reduce: bool = True
) -> tuple[np.ndarray | None, tuple[int, int] | None, list[Problem]]:
    """The RGB image resized into ``image_size`` (uint8 (h, w, 3)), its original (h0, w0), and problems.

    With ``reduce`` a JPEG is decoded at the smallest DCT scale that is still at least the target
    size, then area-resized; grayscale, CMYK, palette and RGBA images are converted to RGB. EXIF
    orientation is ignored: annotations refer to the stored pixel order.
    """
    problems: list[Problem] = []
    try:
        image = Image.open(source if isinstance(source, Path) else io.BytesIO(source))
    except FileNotFoundError:
        return None, None, [Problem(path, "", "image file not found")]
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        return None, None, [Problem(path, "", f"not a readable image ({exc})")]
    size = (image.height, image.width)
    if image.mode != "RGB":
        problems.append(
            Problem(
                path,
                "mode",
                f"{image.mode} image, converted to RGB on load; convert the file to RGB",
                "warning",
            )
        )
    target = rle.resize_shape(size, image_size, frame)
    try:
        if reduce and image.format == "JPEG":
            image.draft(image.mode, (target[1], target[0]))
        pixels = np.asarray(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as exc:
        return None, size, [*problems, Problem(path, "", f"image data cannot be decoded ({exc})")]
    if pixels.shape[:2] != target:
        pixels = cv2.resize(pixels, (target[1], target[0]), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(pixels), size, problems


def read_raw(
    annotations: ImageAnnotations | None,
    image_source: Path | bytes,
    json_path: str,
    image_path: str,
    options: SampleOptions,
    *,
    check_sa1b_fields: bool,
) -> tuple[Raw | None, list[Problem]]:
    """The image and all masks of one annotated image, or ``None`` when any problem is an error."""
    image, size, problems = read_image(image_source, image_path, options.image_size, reduce=options.fast,
                                     frame=options.frame)
    if annotations is None or image is None or size is None:
        return None, problems
    if annotations.size is not None and annotations.size != size:
        (h, w), (h0, w0) = annotations.size, size
        problems.append(
            Problem(json_path, "image.width/height", f"declared {w}x{h} but the image is {w0}x{h0}")
        )
    runs, rles, segment_problems = decode_segments(
        annotations.segments, size, json_path, check_sa1b_fields=check_sa1b_fields
    )
    problems += annotations.problems + segment_problems
    if errors(problems):
        return None, problems
    input_size = image.shape[:2]
    if options.fast:
        masks = rle.sample_runs(runs, size, input_size, pad_to=options.image_size)
    else:
        masks = np.zeros((len(rles), *options.image_size), dtype=bool)
        for mask, rle_dict in zip(masks, rles):
            mask[: input_size[0], : input_size[1]] = rle.decode_naive(rle_dict, input_size)
    fractions = runs.areas() / float(size[0] * size[1])
    return Raw(image, masks, fractions, size, annotations.image_id, json_path), problems


def choose_targets(n: int, k: int, *, seed: int, epoch: int, image_id: str) -> torch.Tensor:
    """``min(n, k)`` distinct indices in ``range(n)``, int64, drawn from (seed, epoch, image_id) alone."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{image_id}".encode(), digest_size=8).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
    return torch.randperm(n, generator=generator)[: min(n, k)]


def finish(raw: Raw, options: SampleOptions, epoch: int) -> dict | BadSample:
    """The sample dict of ``docs/contracts.md`` from a ``Raw``: filter masks, pad, draw targets."""
    count = len(raw.masks)
    pixels = np.count_nonzero(raw.masks.reshape(count, -1), axis=1) if count else np.zeros(0, np.int64)
    keep = (raw.fractions <= options.max_mask_fraction) & (pixels >= options.min_mask_pixels)
    if not keep.any():
        height, width = options.image_size
        return BadSample(
            raw.path,
            f"no usable mask: all {len(keep)} cover more than {options.max_mask_fraction:.0%} of the image "
            f"or fewer than {options.min_mask_pixels} pixels at {height}x{width}",
        )
    h, w = raw.image.shape[:2]
    image = np.zeros((3, *options.image_size), dtype=np.float32)
    image[:, :h, :w] = raw.image.transpose(2, 0, 1)
    masks = raw.masks if keep.all() else raw.masks[keep]
    targets = choose_targets(
        len(masks), options.masks_per_image, seed=options.seed, epoch=epoch, image_id=raw.image_id
    )
    return {
        "image": torch.from_numpy(image),
        "masks": torch.from_numpy(masks),
        "targets": targets,
        "input_size": torch.tensor([h, w], dtype=torch.int64),
        "original_size": torch.tensor(raw.original_size, dtype=torch.int64),
        "image_id": raw.image_id,
    }


def collate(samples: Sequence[dict | BadSample]) -> dict:
    """A batch of ``docs/contracts.md`` from samples; ``BadSample`` entries go to ``"skipped"``.

    Returns ``{"image": (B, 3, H, W), "masks": list[(N_i, H, W)], "targets": list[(K_i,)],
    "input_size": (B, 2), "original_size": (B, 2), "image_id": list[str], "skipped": list[str]}``.
    B may be 0 when every sample is bad (then ``image`` is (0, 3, 0, 0)). Each bad sample is
    warned about once per process.
    """
    good = [s for s in samples if not isinstance(s, BadSample)]
    skipped = [str(s) for s in samples if isinstance(s, BadSample)]
    for reason in skipped:
        if reason not in _WARNED:
            _WARNED.add(reason)
            warnings.warn(
                f"skipping bad sample {reason} ('lora-sam check-data' lists every problem)", stacklevel=2
            )
    if good:
        image = torch.stack([s["image"] for s in good])
        input_size = torch.stack([s["input_size"] for s in good])
        original_size = torch.stack([s["original_size"] for s in good])
    else:
        image = torch.zeros((0, 3, 0, 0))
        input_size = original_size = torch.zeros((0, 2), dtype=torch.int64)
    return {
        "image": image,
        "masks": [s["masks"] for s in good],
        "targets": [s["targets"] for s in good],
        "input_size": input_size,
        "original_size": original_size,
        "image_id": [s["image_id"] for s in good],
        "skipped": skipped,
    }


def batch_to(batch: dict, device: str | torch.device, *, non_blocking: bool = False) -> dict:
    """``collate``'s batch with every tensor, those in its lists included, on ``device`` (what Lightning does
    before a training step; the report and ``lora-sam pretrain`` call it themselves)."""

    def move(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.to(device, non_blocking=non_blocking)
        if isinstance(value, list):
            return [move(v) for v in value]
        return value

    return {key: move(value) for key, value in batch.items()}
