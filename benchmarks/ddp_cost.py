"""What readiness for one GPU and for many costs, measured on the CPU.

    python benchmarks/ddp_cost.py [--model-type vit_b] [--repeats 5]

1. The zero-weighted term DDP adds to every training loss (0 x the sum of every trainable parameter, so
   DDP finds each in the graph): forward + backward of the term alone, LoRA (default layers, rank 4)
   and full fine-tuning, best of ``--repeats``.
2. Host reads of tensor values (``aten._local_scalar_dense``; each a device sync on a GPU) in one
   training step (forward + backward) of one image at K = 4 and K = 16, half points, half boxes.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lora_sam import inject_lora
from lora_sam.models.sam_v1.model import SamV1, build_sam
from lora_sam.training.recipe import RecipeOptions, interactive_step

SIZE = (160, 256)


def term_seconds(sam: torch.nn.Module, repeats: int) -> float:
    params = [p for p in sam.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.zeros_like(p)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        (torch.stack([p.sum() for p in params]).sum() * 0.0).backward()
        best = min(best, time.perf_counter() - start)
    return best


class _Reads(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads += 1
        return func(*args, **(kwargs or {}))


def scalar_reads(sam: torch.nn.Module, k: int) -> int:
    generator = torch.Generator().manual_seed(0)
    masks = torch.zeros(48, *SIZE, dtype=torch.bool)
    for i in range(48):
        y = int(torch.randint(0, SIZE[0] - 60, (1,), generator=generator))
        x = int(torch.randint(0, SIZE[1] - 80, (1,), generator=generator))
        masks[i, y : y + 12 + i, x : x + 16 + i] = True
    batch = {"image": torch.rand(1, 3, *SIZE, generator=generator) * 255, "input_size": torch.tensor([SIZE]),
             "masks": [masks], "targets": [torch.arange(k)], "image_id": ["0"]}
    counter = _Reads()
    with counter:
        result = interactive_step(SamV1(sam), batch, torch.Generator().manual_seed(1),
                                  RecipeOptions(masks_per_image=k))
        result.mean("total").backward()
    return counter.reads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-type", default="vit_b")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    full = build_sam(args.model_type, "random", SIZE).train().requires_grad_(True)
    lora = build_sam(args.model_type, "random", SIZE).train()
    inject_lora(lora, 4, 1.0)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                   f"torch {torch.__version__}",
        "model_type": args.model_type,
        "ddp_term_s": {"lora": term_seconds(lora, args.repeats), "full": term_seconds(full, args.repeats)},
        "trainable_params": {"lora": sum(p.numel() for p in lora.parameters() if p.requires_grad),
                             "full": sum(p.numel() for p in full.parameters())},
        "scalar_reads_per_step": {f"K={k}": scalar_reads(lora, k) for k in (4, 16)},
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
