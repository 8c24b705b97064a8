"""float32 vs bf16 autocast on the CPU: one training step of the interactive recipe, same process, interleaved.

    python benchmarks/bf16_cpu.py --model-type tiny --steps 6
    python benchmarks/bf16_cpu.py --model-type vit_b --steps 4

A step = ``recipe.interactive_step`` (encoder once, K targets decoded together, 3 iterations) + backward +
AdamW over every parameter (full fine-tuning, as a pretraining run would). Each timed round runs one
float32 step and one ``torch.autocast("cpu", dtype=torch.bfloat16)`` step in turn, so machine drift hits
both alike; the figure is the ratio of their best times. On CPUs with AMX (Intel Xeon 4th gen and later)
bf16 matmuls run on the tile units; elsewhere bf16 may be slower than float32.
"""

from __future__ import annotations

import argparse
import time

import torch

from lora_sam.data.loaders import collate, open_dataset
from lora_sam.data.synth import make_synthetic
from lora_sam.models.sam_v1.model import SamV1, build_sam
from lora_sam.training.recipe import RecipeOptions, interactive_step


def _step(sam, optimizer, batch, options: RecipeOptions, bf16: bool, seed: int) -> float:
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = interactive_step(SamV1(sam), batch, torch.Generator().manual_seed(seed), options).mean("total")
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-type", default="tiny", help="tiny (default) or vit_b")
    parser.add_argument("--image-size", type=int, nargs=2, default=(160, 256), metavar=("H", "W"))
    parser.add_argument("--masks", type=int, default=16, help="K, targets per image (default 16)")
    parser.add_argument("--steps", type=int, default=6, help="timed rounds (default 6), after one warm-up")
    args = parser.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        make_synthetic(tmp, images=1, seed=0, image_size=(480, 640))
        dataset = open_dataset(tmp, image_size=tuple(args.image_size), masks_per_image=args.masks)
        batch = collate([dataset[0]])
    sam = build_sam(args.model_type, "random", tuple(args.image_size)).train().requires_grad_(True)
    optimizer = torch.optim.AdamW(sam.parameters(), lr=1e-5)
    options = RecipeOptions(masks_per_image=args.masks)
    times: dict[bool, list[float]] = {False: [], True: []}
    for round_ in range(args.steps + 1):
        for bf16 in (False, True):
            t = _step(sam, optimizer, batch, options, bf16, round_)
            if round_:
                times[bf16].append(t)
    fp32, bf16 = min(times[False]), min(times[True])
    print(f"{args.model_type} at {args.image_size[0]}x{args.image_size[1]}, K = {args.masks}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"float32 step: best {fp32:.3f} s (all {', '.join(f'{t:.3f}' for t in times[False])})")
    print(f"bf16 autocast step: best {bf16:.3f} s (all {', '.join(f'{t:.3f}' for t in times[True])})")
    print(f"bf16 / float32: {bf16 / fp32:.2f}x the time ({fp32 / bf16:.2f}x the speed)")


if __name__ == "__main__":
    main()
