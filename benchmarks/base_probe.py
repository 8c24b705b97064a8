"""Has a base being pretrained started to use the image? Three numbers per checkpoint, on training scenes.

    python benchmarks/base_probe.py --model-type sam2.1_mini --checkpoint runs/pretrain_sam2/run/base.pth \\
        --data runs/pretrain_sam2/data
    python benchmarks/base_probe.py --model-type tiny --checkpoint builtin --data runs/pretrain_sam2/data

For one point in the middle of each of the first targets of a few scenes (single-mask output):
- the mIoU and the predicted area against the target's (a collapsed model predicts the whole frame, or
  nothing, whatever the point);
- how many pixels change when the image is replaced by a flat grey one (0: the image is not used);
- the logits' range per output (dice alone drives them far from 0, where its gradient vanishes).
``--checkpoint`` takes an official-format file, ``builtin`` or a pretrain run's ``last.ckpt``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from lora_sam.data.loaders import open_dataset
from lora_sam.data.samples import collate
from lora_sam.models.families import build, data_frame


def _checkpoint(path: str, folder: str) -> str:
    """A pretrain run's Lightning checkpoint as an official-format file; anything else as it is."""
    if not path.endswith(".ckpt"):
        return path
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    weights = {k.removeprefix("sam."): v for k, v in state.items() if k.startswith("sam.")}
    out = str(Path(folder) / "weights.pt")
    torch.save({"model": weights}, out)  # SAM 2.1's format; SAM v1's loader takes it too
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-type", default="tiny")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True, help="training scenes (lora-sam synth output)")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--targets", type=int, default=6, help="targets per image (default 6)")
    args = parser.parse_args()
    size, frame = data_frame(args.model_type, None)
    with tempfile.TemporaryDirectory() as tmp:
        model = build(args.model_type, _checkpoint(args.checkpoint, tmp), size)
    model.module.eval()
    dataset = open_dataset(Path(args.data), image_size=size, masks_per_image=12, seed=0, frame=frame)
    batch = collate([dataset[(i, 0)] for i in range(args.images)])
    ious, areas, changed, ranges = [], [], [], []
    with torch.no_grad():
        real = model.encode(batch["image"].float(), batch["input_size"])
        flat = model.encode(torch.full_like(batch["image"].float(), 120.0), batch["input_size"])
        for i in range(args.images):
            for mask in batch["masks"][i][: args.targets]:
                ys, xs = torch.nonzero(mask, as_tuple=True)
                point = torch.tensor([[[float(xs[len(xs) // 2]), float(ys[len(ys) // 2])]]])
                label = torch.ones(1, 1, dtype=torch.long)
                low, _ = model.decode(real[i : i + 1], points=point, labels=label, multimask=False)
                low_flat, _ = model.decode(flat[i : i + 1], points=point, labels=label, multimask=False)
                pred = model.upscale(low, size)[0, 0] > 0
                pred_flat = model.upscale(low_flat, size)[0, 0] > 0
                ious.append(float((pred & mask).sum() / (pred | mask).sum().clamp(min=1)))
                areas.append((float(pred.float().mean()), float(mask.float().mean())))
                changed.append(float((pred ^ pred_flat).float().mean()))
                ranges.append((float(low.min()), float(low.max())))
    n = len(ious)
    print(f"{args.model_type} {args.checkpoint}: {n} point prompts on {args.images} training scenes")
    print(f"mIoU {sum(ious) / n:.3f}; predicted area {sum(a for a, _ in areas) / n:.3f} of the frame "
          f"(targets {sum(b for _, b in areas) / n:.3f})")
    print(f"pixels that change when the image is flat grey: {sum(changed) / n:.3f}")
    print(f"logits: min {min(lo for lo, _ in ranges):.1f}, max {max(hi for _, hi in ranges):.1f}")


if __name__ == "__main__":
    main()
