"""Reading and validating SA-1B and COCO annotations: the one validation code path.

The datasets and ``lora-sam check-data`` call the same functions. Each returns what it could
read plus a list of ``Problem`` (file, field, message). Problems of severity ``"error"`` make a
sample unusable (training skips it, or raises ``DataError`` when strict); ``"warning"`` ones
are harmless for training (a grayscale image converted to RGB, an inconsistent bbox, which
training never reads) but ``check-data`` still reports them.

SA-1B JSON: ``{"image": {"image_id", "width", "height", "file_name"}, "annotations": [{"id",
"segmentation": {"size": [h, w], "counts": str}, "bbox": XYWH, "area", "predicted_iou",
"point_coords", "stability_score", "crop_box"}]}``. Real SA-1B quirks that are not problems:
bbox w and h are one pixel less than ``pycocotools.mask.toBbox`` gives; predicted_iou may
exceed 1.

COCO instances JSON: ``{"images": [{"id", "file_name", "width", "height"}], "annotations":
[{"id", "image_id", "segmentation": polygons [[x0, y0, x1, y1, ...], ...] or RLE
{"size", "counts": str | list[int]}, "bbox", "iscrowd"}]}``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pycocotools import mask as mask_utils

from lora_sam.data import rle

Severity = Literal["error", "warning"]
SA1B_KEYS = ("id", "bbox", "area", "predicted_iou", "point_coords", "stability_score", "crop_box")


@dataclass(frozen=True)
class Problem:
    """One problem of one file: ``path: field: message``."""

    path: str
    field: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        return f"{self.path}: {self.field}: {self.message}" if self.field else f"{self.path}: {self.message}"


class DataError(ValueError):
    """A sample that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class BadSample:
    """Returned by a dataset in place of a sample that cannot be read (unless ``strict``)."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class Segment:
    """One annotation's mask: ``segmentation`` is a COCO RLE dict or a list of polygons."""

    label: str
    segmentation: dict | list
    annotation: dict


@dataclass
class ImageAnnotations:
    """The validated annotations of one image; ``size`` is the declared (h, w)."""

    image_id: str
    file_name: str | None
    size: tuple[int, int] | None
    segments: list[Segment] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def errors(problems: Sequence[Problem]) -> list[Problem]:
    """The problems that make a sample unusable."""
    return [p for p in problems if p.severity == "error"]


def load_json(source: Path | bytes, path: str) -> tuple[Any, list[Problem]]:
    """The parsed JSON of a file or of bytes, or ``None`` and the reason it cannot be read."""
    try:
        raw = source.read_bytes() if isinstance(source, Path) else source
    except FileNotFoundError:
        return None, [Problem(path, "", "file not found")]
    except OSError as exc:
        return None, [Problem(path, "", f"cannot be read ({exc})")]
    try:
        return json.loads(raw), []
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, [Problem(path, "", f"not valid JSON ({exc}); re-download or regenerate the file")]


def _positive_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool) and value > 0


def _rle_problem(segmentation: Any) -> str | None:
    if not isinstance(segmentation, dict) or "size" not in segmentation or "counts" not in segmentation:
        return "segmentation must be an RLE {'size': [h, w], 'counts': ...}"
    size = segmentation["size"]
    if not (isinstance(size, list | tuple) and len(size) == 2 and all(_positive_int(v) for v in size)):
        return f"segmentation.size must be [h, w] with positive ints, got {size!r}"
    counts = segmentation["counts"]
    if isinstance(counts, str | bytes):
        return None
    if isinstance(counts, list) and all(isinstance(v, int) and v >= 0 for v in counts):
        return None
    return "segmentation.counts must be a compressed RLE string or a list of non-negative ints"


def _polygon_problem(polygons: list) -> str | None:
    for polygon in polygons:
        if not isinstance(polygon, list) or not all(isinstance(v, int | float) for v in polygon):
            return "segmentation polygons must be lists of numbers [x0, y0, x1, y1, ...]"
        if len(polygon) < 6 or len(polygon) % 2:
            return f"a segmentation polygon has {len(polygon)} numbers; it needs an even count of at least 6"
    return None if polygons else "segmentation is an empty list of polygons"


def parse_sa1b(
    doc: Any, path: str, *, image_id: str | None = None
) -> tuple[ImageAnnotations | None, list[Problem]]:
    """The annotations of an SA-1B JSON document, and its problems.

    ``image_id`` defaults to the file's stem (``sa_1``), which tar shards use as their key too.
    """
    problems: list[Problem] = []
    if not isinstance(doc, dict):
        return None, [Problem(path, "", "expected a JSON object with 'image' and 'annotations'")]
    info = doc.get("image")
    size = None
    file_name = None
    if not isinstance(info, dict):
        problems.append(
            Problem(path, "image", "missing or not an object {'image_id', 'width', 'height', 'file_name'}")
        )
    else:
        bad = [k for k in ("width", "height") if not _positive_int(info.get(k))]
        for key in bad:
            problems.append(
                Problem(path, f"image.{key}", f"missing or not a positive int ({info.get(key)!r})")
            )
        if not bad:
            size = (int(info["height"]), int(info["width"]))
        for key in ("image_id", "file_name"):
            if key not in info:
                problems.append(Problem(path, f"image.{key}", "missing key", "warning"))
        file_name = info.get("file_name") if isinstance(info.get("file_name"), str) else None
    annotations = doc.get("annotations")
    record = ImageAnnotations(image_id or Path(path).stem, file_name, size)
    if not isinstance(annotations, list):
        problems.append(Problem(path, "annotations", "missing or not a list"))
        annotations = []
    elif not annotations:
        problems.append(Problem(path, "annotations", "empty: no masks to train on"))
    for i, ann in enumerate(annotations):
        label = f"annotation {i}"
        if not isinstance(ann, dict):
            problems.append(Problem(path, label, "not an object"))
            continue
        reason = _rle_problem(ann.get("segmentation"))
        if reason:
            problems.append(Problem(path, label, reason))
            continue
        missing = [k for k in SA1B_KEYS if k not in ann]
        if missing:
            problems.append(Problem(path, label, f"missing keys {', '.join(missing)}", "warning"))
        record.segments.append(Segment(label, ann["segmentation"], ann))
    return record, problems


def parse_coco(doc: Any, path: str) -> tuple[list[ImageAnnotations], list[Problem]]:
    """The images of a COCO instances JSON document with their annotations, and the problems.

    Each image's own problems (bad annotations) are in its ``problems``; the returned list holds
    the file-level ones (missing keys, annotations of unknown images, images with no annotations).
    """
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("images"), list)
        or not isinstance(doc.get("annotations"), list)
    ):
        return [], [
            Problem(
                path,
                "",
                "not a COCO instances file: expected an object with 'images' and 'annotations' lists",
            )
        ]
    problems: list[Problem] = []
    images: dict[Any, ImageAnnotations] = {}
    for j, info in enumerate(doc["images"]):
        label = f"images[{j}]"
        if not isinstance(info, dict) or "id" not in info or not isinstance(info.get("file_name"), str):
            problems.append(Problem(path, label, "needs 'id' and 'file_name'"))
            continue
        size = (info.get("height"), info.get("width"))
        if not all(_positive_int(v) for v in size):
            problems.append(
                Problem(path, label, f"height and width must be positive ints, got {size[0]!r}x{size[1]!r}")
            )
            continue
        images[info["id"]] = ImageAnnotations(
            str(info["id"]), info["file_name"], (int(size[0]), int(size[1]))
        )
    for i, ann in enumerate(doc["annotations"]):
        label = f"annotation {i} (id {ann.get('id')})" if isinstance(ann, dict) else f"annotation {i}"
        record = images.get(ann.get("image_id")) if isinstance(ann, dict) else None
        if record is None:
            problems.append(Problem(path, label, "image_id is missing or names no entry of 'images'"))
            continue
        segmentation = ann.get("segmentation")
        reason = (
            _polygon_problem(segmentation) if isinstance(segmentation, list) else _rle_problem(segmentation)
        )
        if reason:
            record.problems.append(Problem(path, label, reason))
        else:
            record.segments.append(Segment(label, segmentation, ann))
    for record in images.values():
        if not record.segments and not record.problems:
            problems.append(
                Problem(path, f"image {record.image_id}", "no annotations; left out of training", "warning")
            )
    return list(images.values()), problems


def _rle_object(segmentation: dict | list, size: tuple[int, int]) -> dict:
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, size[0], size[1]))
    return rle.to_pycocotools(segmentation)


def to_rle(segmentation: dict | list, size: tuple[int, int]) -> dict:
    """A COCO RLE dict over ``size`` = (h, w) of an RLE or polygon segmentation."""
    return segmentation if isinstance(segmentation, dict) else _rle_object(segmentation, size)


def _bbox_problem(bbox: Any, rle_object: dict) -> str | None:
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, int | float) for v in bbox)):
        return f"bbox must be [x, y, w, h], got {bbox!r}"
    x, y, w, h = (float(v) for v in bbox)
    tx, ty, tw, th = (float(v) for v in mask_utils.toBbox(rle_object))
    if abs(x - tx) <= 0.5 and abs(y - ty) <= 0.5 and -1.5 <= w - tw <= 0.5 and -1.5 <= h - th <= 0.5:
        return None
    return (
        f"bbox [{x:g}, {y:g}, {w:g}, {h:g}] does not match the mask's box [{tx:g}, {ty:g}, {tw:g}, {th:g}] "
        "(XYWH; SA-1B's w, h may be one less)"
    )


def decode_segments(
    segments: Sequence[Segment], size: tuple[int, int], path: str, *, check_sa1b_fields: bool
) -> tuple[rle.Runs, list[dict], list[Problem]]:
    """Run lengths and COCO RLE dicts of the segments over the image's (h, w), and the problems.

    Segments with an error are left out of both. ``check_sa1b_fields`` also compares each
    annotation's bbox and area with its mask (warnings).
    """
    problems: list[Problem] = []
    decodable: list[tuple[Segment, dict]] = []
    for segment in segments:
        seg = segment.segmentation
        if isinstance(seg, dict) and tuple(seg["size"]) != size:
            message = f"RLE size {tuple(seg['size'])} does not match image {size[1]}x{size[0]}"
            problems.append(Problem(path, segment.label, message))
            continue
        try:
            decodable.append((segment, to_rle(seg, size)))
        except (ValueError, TypeError) as exc:
            problems.append(Problem(path, segment.label, f"segmentation: {exc}"))
    while True:
        try:
            runs = rle.decode_many([r["counts"] for _, r in decodable])
            break
        except rle.RLEError as exc:
            segment, _ = decodable.pop(exc.index)
            problems.append(Problem(path, segment.label, f"segmentation.counts: {exc}"))
    totals = runs.totals()
    wrong = totals != size[0] * size[1]
    for i in np.flatnonzero(wrong):
        message = f"segmentation.counts: covers {totals[i]} pixels but the {size[1]}x{size[0]} image has {size[0] * size[1]}"
        problems.append(Problem(path, decodable[i][0].label, message))
    if wrong.any():
        runs = runs.select(~wrong)
        decodable = [d for d, bad in zip(decodable, wrong) if not bad]
    if check_sa1b_fields:
        for (segment, rle_dict), area in zip(decodable, runs.areas().tolist()):
            ann = segment.annotation
            if "bbox" in ann and (reason := _bbox_problem(ann["bbox"], _rle_object(rle_dict, size))):
                problems.append(Problem(path, segment.label, reason, "warning"))
            if isinstance(ann.get("area"), int | float) and abs(ann["area"] - area) > 0.5:
                message = f"area {ann['area']} but the mask has {area} pixels"
                problems.append(Problem(path, segment.label, message, "warning"))
            if area == 0:
                problems.append(Problem(path, segment.label, "empty mask", "warning"))
    return runs, [r for _, r in decodable], problems
