"""SA-1B annotations of automatically generated masks, and a picture of them, for any model family.

``masks_to_coco`` turns the records of a "segment everything" generator (Meta's ``SamAutomaticMaskGenerator``
or ``SAM2AutomaticMaskGenerator``, in any output mode) into SA-1B annotations with COCO compressed RLE, the
format this package's own loaders read (``data.annotations``); ``overlay_masks`` / ``write_overlay`` draw them
for a quick look. ``lora-sam segment-all`` writes both.
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

__all__ = ["masks_to_coco", "overlay_masks", "write_overlay"]


def _coco_rle(segmentation: Any, image_size: tuple[int, int]) -> dict[str, Any]:
    """A JSON-ready COCO compressed RLE of a boolean (H, W) mask or of an RLE the generator wrote."""
    if isinstance(segmentation, dict):  # output_mode "coco_rle" (counts str) or "uncompressed_rle" (list)
        rle = segmentation
        if isinstance(rle.get("counts"), list):
            rle = mask_utils.frPyObjects(rle, *rle["size"])
    else:
        mask = np.asarray(segmentation)
        if mask.shape != tuple(image_size):
            raise ValueError(f"a mask of shape {mask.shape} does not fit the image size {tuple(image_size)}")
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    if list(rle["size"]) != list(image_size):
        raise ValueError(f"an RLE of size {rle['size']} does not fit the image size {list(image_size)}")
    counts = rle["counts"]
    return {
        "size": [int(s) for s in rle["size"]],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }


def masks_to_coco(records: Sequence[dict[str, Any]], image_size: tuple[int, int]) -> list[dict[str, Any]]:
    """SA-1B annotations of ``SamAutomaticMaskGenerator.generate``'s records (any output mode).

    Args:
        records: the generator's output, in its order.
        image_size: (H, W) of the image the masks were generated on.
    Returns:
        one dict per mask: ``id`` (1, 2, ...), ``segmentation`` {"size": [h, w], "counts": str},
        ``bbox`` XYWH, ``area``, ``predicted_iou``, ``stability_score``, ``point_coords``, ``crop_box`` (XYWH),
        the keys and types of SA-1B's JSON files.
    """
    annotations = []
    for i, record in enumerate(records):
        annotations.append(
            {
                "id": i + 1,
                "segmentation": _coco_rle(record["segmentation"], image_size),
                "bbox": [float(v) for v in record["bbox"]],
                "area": int(record["area"]),
                "predicted_iou": float(record["predicted_iou"]),
                "stability_score": float(record["stability_score"]),
                "point_coords": [[float(v) for v in point] for point in record["point_coords"]],
                "crop_box": [float(v) for v in record["crop_box"]],
            }
        )
    return annotations


def _colour(i: int) -> np.ndarray:
    """A bright colour for mask ``i``, hues spread by the golden ratio so neighbours in the list differ."""
    return np.array(colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.75, 1.0)) * 255


def _outline(mask: np.ndarray) -> np.ndarray:
    """The mask's pixels with a 4-neighbour outside the mask (the image border counts as outside)."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def overlay_masks(image: np.ndarray, masks: Sequence[np.ndarray], alpha: float = 0.5) -> np.ndarray:
    """``image`` (H, W, 3) uint8 with each boolean (H, W) mask tinted in its own colour and outlined.

    Masks are drawn from big to small, so a part stays visible on top of its whole.
    """
    picture = np.asarray(image, dtype=np.float32).copy()
    for i in sorted(range(len(masks)), key=lambda m: -int(np.count_nonzero(masks[m]))):
        mask = np.asarray(masks[i], dtype=bool)
        colour = _colour(i)
        picture[mask] = (1 - alpha) * picture[mask] + alpha * colour
        picture[_outline(mask)] = colour
    return picture.round().clip(0, 255).astype(np.uint8)


def write_overlay(path: str | os.PathLike, image: np.ndarray, annotations: Sequence[dict[str, Any]]) -> Path:
    """Write ``image`` with the masks of ``annotations`` (``masks_to_coco``'s output) drawn on it, as a PNG."""
    masks = [mask_utils.decode(ann["segmentation"]).astype(bool) for ann in annotations]
    path = Path(path)
    Image.fromarray(overlay_masks(image, masks)).save(path, format="PNG")
    return path
