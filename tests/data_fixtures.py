"""Helpers for the data tests: synthetic SA-1B folders, hand-made samples, tar shards."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

SHARED_DATA = Path(os.environ.get("LORA_SAM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
"""Real sample files (one SA-1B image, two COCO images): $LORA_SAM_SHARED_DATA, else ``../shared/data`` beside
the checkout. Never part of the repository; tests that read them skip when the folder is absent."""


def shared_data() -> Path:
    """The real sample data folder, or skip the test."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA} (set LORA_SAM_SHARED_DATA to its folder)")
    return SHARED_DATA


def synth(folder: Path, images: int = 6, *, seed: int = 0, size: tuple[int, int] = (96, 128)) -> Path:
    """``images`` synthetic SA-1B samples (lora_sam.data.synth) in ``folder``."""
    from lora_sam.data.synth import make_synthetic

    make_synthetic(folder, images=images, seed=seed, image_size=size)
    return folder


def sa1b_annotation(mask: np.ndarray, annotation_id: int) -> dict:
    """An SA-1B annotation of a bool (h, w) mask, bbox in the SA-1B convention (w, h one less)."""
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    x, y, w, h = mask_utils.toBbox(encoded).tolist()
    return {
        "bbox": [x, y, w - 1, h - 1],
        "area": int(mask.sum()),
        "segmentation": {"size": list(mask.shape), "counts": encoded["counts"].decode("ascii")},
        "predicted_iou": 1.01,
        "point_coords": [[x, y]],
        "crop_box": [0, 0, mask.shape[1], mask.shape[0]],
        "id": annotation_id,
        "stability_score": 0.97,
    }


def write_sa1b(
    folder: Path, image_id: int, image: np.ndarray, masks: list[np.ndarray], *, mode: str = "RGB"
) -> Path:
    """Write ``sa_{image_id}.jpg`` (converted to ``mode``) + ``.json``; returns the JSON path."""
    folder.mkdir(parents=True, exist_ok=True)
    height, width = image.shape[:2]
    Image.fromarray(image).convert(mode).save(folder / f"sa_{image_id}.jpg", quality=95)
    doc = {
        "image": {"image_id": image_id, "width": width, "height": height, "file_name": f"sa_{image_id}.jpg"},
        "annotations": [sa1b_annotation(m, image_id * 100 + i) for i, m in enumerate(masks)],
    }
    path = folder / f"sa_{image_id}.json"
    path.write_text(json.dumps(doc))
    return path


def write_shards(source: Path, out: Path, per_shard: int) -> list[Path]:
    """Pack the ``sa_*.jpg`` + ``.json`` pairs of ``source`` into tar shards of ``per_shard`` images."""
    out.mkdir(parents=True, exist_ok=True)
    stems = sorted({p.stem for p in source.glob("sa_*.json")}, key=lambda s: int(s.split("_")[1]))
    shards = []
    for n, start in enumerate(range(0, len(stems), per_shard)):
        path = out / f"sa_{n:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for stem in stems[start : start + per_shard]:
                for suffix in (".jpg", ".json"):
                    tar.add(source / f"{stem}{suffix}", arcname=f"{stem}{suffix}")
        shards.append(path)
    return shards


def assert_same_sample(a: dict, b: dict) -> None:
    """Two samples are equal in every field."""
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            assert value.dtype == b[key].dtype, key
            assert torch.equal(value, b[key]), key
        else:
            assert value == b[key], key
