"""Deployment costs on this machine's CPU: ``lora-sam segment-all`` per image, and the ONNX decoder per click.

    python benchmarks/deploy.py                                   # vit_b, random weights, 32x32 points
    python benchmarks/deploy.py --model-type tiny --points-per-side 8 --images 1 --runs 20   # a quick check

(a) segment-all: seconds per image of the command's per-image step (image encoder, the automatic mask
generator over ``points_per_side``^2 point prompts, COCO RLE, JSON and overlay PNG), on a 768x1024
photo-like image; the model is built once, outside the timing. With random weights SAM's quality
filters drop nearly every mask early, so pass ``--pred-iou-thresh 0 --stability-score-thresh 0`` to
time the later steps (NMS, RLE, drawing) on many masks; the JSON line reports the masks kept.

(b) decoder latency for one click on a cached image embedding: ``decoder.onnx`` in onnxruntime
(CPU) against PyTorch's ``SamPredictor.predict(multimask_output=False)``, both including the
upscaling of the mask to the image size; median of ``--runs`` after ``--warmup`` runs.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image
from segment_anything import SamPredictor

from lora_sam.models.sam_v1.deploy import automatic_mask_generator, decoder_feed, export_onnx
from lora_sam.models.sam_v1.model import ORIGINAL_SIZE, build_sam
from lora_sam.runs.segment_all import segment_image


def _image(seed: int, size: tuple[int, int] = (768, 1024)) -> np.ndarray:
    """A photo-like RGB image: a colour gradient with a few filled ellipses and some noise."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    image = np.stack([xx / w, yy / h, 1 - (xx + yy) / (h + w)], -1) * 200
    for _ in range(10):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(20, h / 4), rng.uniform(20, w / 4)
        image[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = rng.uniform(0, 255, 3)
    return (image + rng.normal(0, 6, image.shape)).clip(0, 255).astype(np.uint8)


def _timings(fn: Callable[[], object], runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def segment_all_seconds(sam: torch.nn.Module, args: argparse.Namespace, folder: Path) -> dict:
    """Seconds per image of segment-all's per-image step, and the masks it kept."""
    generator = automatic_mask_generator(
        sam,
        points_per_side=args.points_per_side,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
    )
    seconds, masks = [], []
    for i in range(args.images):
        path = folder / f"image{i}.png"
        Image.fromarray(_image(args.seed + i)).save(path)
        start = time.perf_counter()
        masks.append(segment_image(generator, path, folder))
        seconds.append(time.perf_counter() - start)
    return {"median_s": statistics.median(seconds), "all_s": [round(s, 3) for s in seconds], "masks": masks}


def decoder_latency(sam: torch.nn.Module, args: argparse.Namespace, folder: Path) -> dict:
    """Milliseconds per click: the ONNX decoder (and its int8 copy) in onnxruntime against PyTorch."""
    paths = export_onnx(sam, folder, parts=("decoder",), quantize=args.quantize)
    image = _image(args.seed)
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    point, label = np.array([[512.0, 384.0]]), np.array([1])
    feed = decoder_feed(predictor.features.numpy(), point, label, image.shape[:2])
    torch_times = _timings(
        lambda: predictor.predict(point, label, multimask_output=False), args.runs, args.warmup
    )
    result = {"torch_ms": 1000 * statistics.median(torch_times)}
    options = ort.SessionOptions()
    if args.threads:
        options.intra_op_num_threads = args.threads
    for name, path in paths.items():
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        times = _timings(lambda s=session: s.run(None, feed), args.runs, args.warmup)
        result[{"decoder": "onnx_ms", "decoder_int8": "onnx_int8_ms"}[name]] = 1000 * statistics.median(times)
    result["file_mib"] = {name: round(path.stat().st_size / 2**20, 2) for name, path in paths.items()}
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-type", default="vit_b", help="vit_b / vit_l / vit_h / tiny (default vit_b)")
    parser.add_argument("--checkpoint", default="random", help="SAM checkpoint (default: random weights)")
    parser.add_argument("--points-per-side", type=int, default=32, help="segment-all grid (default 32)")
    parser.add_argument(
        "--pred-iou-thresh", type=float, default=0.88, help="segment-all filter (default 0.88)"
    )
    parser.add_argument(
        "--stability-score-thresh", type=float, default=0.95, help="segment-all filter (default 0.95)"
    )
    parser.add_argument("--images", type=int, default=3, help="images timed for segment-all (default 3)")
    parser.add_argument("--runs", type=int, default=50, help="decoder runs timed (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="decoder runs before timing (default 5)")
    parser.add_argument("--quantize", action="store_true", help="also time the int8 decoder")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch and onnxruntime threads (default: theirs)"
    )
    parser.add_argument("--skip-segment-all", action="store_true", help="time only the decoder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the images (default 0)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    sam = build_sam(args.model_type, args.checkpoint, image_size=(ORIGINAL_SIZE, ORIGINAL_SIZE))
    record = {
        "model_type": args.model_type,
        "checkpoint": args.checkpoint,
        "image_hw": [768, 1024],
        "points_per_side": args.points_per_side,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__},
    }
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_segment_all:
            record["segment_all"] = segment_all_seconds(sam, args, Path(tmp))
        record["decoder"] = decoder_latency(sam, args, Path(tmp))
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    main()
