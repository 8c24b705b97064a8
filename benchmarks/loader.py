"""Loader benchmark: samples per second per core for SA-1B-size samples at training resolution.

Writes SA-1B-format samples (about 1500x2250 JPEG, 100 random polygon / ellipse masks as
compressed RLE) to a temporary folder, then reads them on one core (one thread) three ways:

- naive: full-resolution JPEG decode, each mask decoded at full resolution by pycocotools,
  then resized (``SA1BFolder(fast=False)``);
- fast: reduced-size JPEG decode, masks read straight from the RLE runs (``SA1BFolder()``);
- cache: a ``lora-sam prepare`` cache of the same data (``CachedDataset``).

It checks that the naive and fast masks are identical, and reports samples per CPU second of
this one-thread process (= per core, unaffected by other load), the mask-only rate (no image
decoding), and the peak memory traced by tracemalloc while reading one sample.

Usage: python benchmarks/loader.py [--samples 12] [--masks 100] [--height 1500 --width 2250]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils

from lora_sam.data.annotations import parse_sa1b
from lora_sam.data.datasets import CachedDataset, SA1BFolder
from lora_sam.data.prepare import prepare_cache
from lora_sam.data.rle import decode_many, decode_naive, resize_shape, sample_runs


def _random_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=np.uint8)
    radius = float(np.exp(rng.uniform(np.log(12), np.log(0.4 * min(height, width)))))
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    if rng.random() < 0.5:
        axes = (int(radius), int(radius * rng.uniform(0.3, 1.0)))
        cv2.ellipse(mask, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    else:
        angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(5, 14))))
        r = radius * rng.uniform(0.4, 1.0, angles.size)
        points = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1).astype(np.int32)
        cv2.fillPoly(mask, [points], 1)
    return mask


def write_sample(
    folder: Path, image_id: int, rng: np.random.Generator, size: tuple[int, int], masks: int
) -> None:
    """Write ``sa_{image_id}.jpg`` + ``.json`` in the SA-1B format with ``masks`` random masks."""
    height, width = size
    coarse = rng.uniform(40, 215, (12, 18, 3)).astype(np.float32)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    annotations = []
    while len(annotations) < masks:
        mask = _random_mask(rng, height, width)
        if not mask.any():
            continue
        ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        box = (slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
        inside = mask[box] > 0
        image[box][inside] = 0.6 * image[box][inside] + 0.4 * rng.uniform(0, 255, 3).astype(np.float32)
        encoded = mask_utils.encode(np.asfortranarray(mask))
        x, y, w, h = mask_utils.toBbox(encoded).tolist()
        annotations.append(
            {
                "bbox": [x, y, w - 1, h - 1],
                "area": int(mask_utils.area(encoded)),
                "segmentation": {"size": [height, width], "counts": encoded["counts"].decode("ascii")},
                "predicted_iou": float(rng.uniform(0.85, 1.02)),
                "point_coords": [[x + w / 2, y + h / 2]],
                "crop_box": [0.0, 0.0, float(width), float(height)],
                "id": int(image_id * 1000 + len(annotations)),
                "stability_score": float(rng.uniform(0.9, 1.0)),
            }
        )
    image += rng.normal(0, 12, image.shape).astype(np.float32)
    bgr = np.clip(image, 0, 255).astype(np.uint8)[:, :, ::-1]
    cv2.imwrite(str(folder / f"sa_{image_id}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
    info = {"image_id": image_id, "width": width, "height": height, "file_name": f"sa_{image_id}.jpg"}
    (folder / f"sa_{image_id}.json").write_text(json.dumps({"image": info, "annotations": annotations}))


def rate(read: Callable[[int], object], count: int, repeats: int) -> float:
    """Items per CPU second of ``read(i)`` for i in range(count), best of ``repeats`` passes.

    CPU time of this single-threaded process, so other load on a shared machine does not count.
    """
    read(0)
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for i in range(count):
            read(i)
        best = min(best, time.process_time() - start)
    return count / best


def peak_mib(read: Callable[[int], object]) -> float:
    """Peak memory traced by tracemalloc while reading one sample, MiB."""
    tracemalloc.start()
    read(0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=12, help="samples to generate (default 12)")
    parser.add_argument("--masks", type=int, default=100, help="masks per sample (default 100)")
    parser.add_argument("--height", type=int, default=1500)
    parser.add_argument("--width", type=int, default=2250)
    parser.add_argument("--image-size", type=int, nargs=2, default=(160, 256), metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=2, help="timed passes, best kept (default 2)")
    return parser


def write_samples(data: Path, args: argparse.Namespace) -> None:
    """``args.samples`` SA-1B-format samples in ``data``; prints how long that took and their JPEG size."""
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for i in range(args.samples):
        write_sample(data, i + 1, rng, (args.height, args.width), args.masks)
    jpeg_kib = np.mean([p.stat().st_size for p in data.glob("*.jpg")]) / 1024
    print(
        f"generated {args.samples} samples in {time.perf_counter() - start:.0f} s (JPEG {jpeg_kib:.0f} KiB each)"
    )


def mask_readers(
    data: Path, args: argparse.Namespace, image_size: tuple[int, int]
) -> tuple[Callable[[int], object], Callable[[int], object]]:
    """Readers of sample i's masks alone (no image decoding), at ``image_size``: naive and fast."""
    documents = [json.loads((data / f"sa_{i + 1}.json").read_text()) for i in range(args.samples)]
    segments = [parse_sa1b(doc, "bench")[0].segments for doc in documents]
    out_size = resize_shape((args.height, args.width), image_size, "pad")

    def naive_masks(i: int) -> object:
        return [decode_naive(s.segmentation, out_size) for s in segments[i]]

    def fast_masks(i: int) -> object:
        runs = decode_many([s.segmentation["counts"] for s in segments[i]])
        return sample_runs(runs, (args.height, args.width), out_size)

    return naive_masks, fast_masks


def measure(
    tmp: Path, args: argparse.Namespace, image_size: tuple[int, int]
) -> dict[str, tuple[float, float, float]]:
    """Writes the samples under ``tmp``, checks that naive and fast masks agree, prepares the cache, and
    measures each path: {path: (samples/s, masks-only images/s or NaN, peak MiB)}."""
    data, cache = tmp / "data", tmp / "cache"
    data.mkdir()
    write_samples(data, args)
    naive = SA1BFolder(data, image_size=image_size, fast=False)
    fast = SA1BFolder(data, image_size=image_size)
    for i in range(len(fast)):
        assert torch.equal(naive[i]["masks"], fast[i]["masks"]), (
            f"fast and naive masks differ for {fast.path(i)}"
        )
    prepare_cache(data, cache, image_size=image_size, progress=False)
    cached = CachedDataset(cache, image_size=image_size)
    naive_masks, fast_masks = mask_readers(data, args, image_size)
    rows = [
        ("naive (full decode, then resize)", naive.__getitem__, naive_masks),
        ("fast (reduced JPEG, RLE sampled)", fast.__getitem__, fast_masks),
        ("prepared cache", cached.__getitem__, None),
    ]
    results = {}
    for name, read, masks_only in rows:
        sample_rate = rate(read, args.samples, args.repeats)
        mask_rate = rate(masks_only, args.samples, args.repeats) if masks_only else float("nan")
        results[name] = (sample_rate, mask_rate, peak_mib(read))
    return results


def report(
    results: dict[str, tuple[float, float, float]], args: argparse.Namespace, image_size: tuple[int, int],
    baseline_rss: float,
) -> None:
    """Prints the table of ``measure``'s results and the targets, met or not."""
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, one thread, "
        f"{args.samples} samples {args.height}x{args.width}, {args.masks} masks, at {image_size[0]}x{image_size[1]}"
    )
    print("| path | samples/s per core | masks only, images/s | peak traced memory per sample |")
    print("|---|---|---|---|")
    for name, (sample_rate, mask_rate, peak) in results.items():
        masks_text = f"{mask_rate:.1f}" if mask_rate == mask_rate else "-"
        print(f"| {name} | {sample_rate:.1f} | {masks_text} | {peak:.1f} MiB |")
    names = list(results)  # naive, fast, cache
    base, quick, cache_rate = (results[name][0] for name in names)
    print(
        f"\nfast / naive: {quick / base:.1f}x (target >= 10x: {'met' if quick / base >= 10 else 'NOT met'})"
    )
    print(f"masks only, fast / naive: {results[names[1]][1] / results[names[0]][1]:.1f}x")
    print(
        f"cache: {cache_rate:.0f} samples/s per core (target >= 20: {'met' if cache_rate >= 20 else 'NOT met'})"
    )
    print(
        f"max RSS: {_max_rss_mib():.0f} MiB, of which {baseline_rss:.0f} MiB before any data (torch and cv2 imported)"
    )


def main() -> None:
    args = build_parser().parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    baseline_rss = _max_rss_mib()
    image_size = tuple(args.image_size)
    with tempfile.TemporaryDirectory() as tmp:
        results = measure(Path(tmp), args, image_size)
    report(results, args, image_size, baseline_rss)

if __name__ == "__main__":
    main()
