"""The decoder side of a training step, eager against ``torch.compile``, at a fixed K (what a static-K path buys).

    python benchmarks/decoder_compile.py --model-type vit_b --rounds 6

The decoder side of one image's K point prompts, as ``decoder_side.decode_and_score`` runs it (eagerly): prompt encoder and mask
decoder (K prompts against one image embedding), the upscale of the logits to the training frame, the
pairing of the 3 outputs with the prompt's distinct GT masks (``assign_outputs``) and SAM's loss, then the
backward into the image embedding and the decoder's weights. Two shapes, as a step has them: round 1 (one
point, 3 outputs) and round 3 (three points and the previous logits, the single output). K, the points
and the frame never change, so the compiled function is compiled once per shape (``dynamic=False``); that
is what padding each prompt kind to ``masks_per_image`` would give the recipe. Each timed round runs the
eager and the compiled function in turn, so machine drift hits both alike; the figures are best (median).
The first compiled call's seconds (compile and run) are reported apart, with the graph breaks
``torch._dynamo.explain`` finds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from lora_sam.models import families
from lora_sam.models.promptable import PromptableModel
from lora_sam.training.decoder_side import decode_and_score
from lora_sam.training.recipe import RecipeOptions


def _inputs(k: int, size: tuple[int, int], grid: tuple[int, int], dim: int, clicks: int) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(clicks)
    height, width = size
    gt = torch.rand(k, 3, height, width, generator=generator) > 0.7
    inputs = {"embedding": torch.randn(1, dim, *grid, generator=generator).requires_grad_(True),
              "points": torch.rand(k, clicks, 2, generator=generator) * torch.tensor([width, height]),
              "labels": torch.ones(k, clicks, dtype=torch.long), "gt": gt, "target": gt[:, 0]}
    if clicks > 1:
        inputs["mask_input"] = torch.randn(k, 1, 4 * grid[0], 4 * grid[1], generator=generator)
    return inputs


def decoder_side(model: PromptableModel, size: tuple[int, int]) -> Callable[..., Tensor]:
    """The loss of K prompts: multimask with pairing (no ``mask_input``) or the single output."""
    options = RecipeOptions(masks_per_image=1_000)

    def run(embedding: Tensor, points: Tensor, labels: Tensor, gt: Tensor, target: Tensor,
            mask_input: Tensor | None = None) -> Tensor:
        prompts = {"points": points, "labels": labels} | ({} if mask_input is None else {"mask_input": mask_input})
        mode = "multi" if mask_input is None else "single"
        return decode_and_score(model, options, embedding, size, mode, gt, target, prompts)[0][0]["total"]

    return run


def _timed(fn: Callable[..., Tensor], inputs: dict[str, Tensor]) -> float:
    start = time.perf_counter()
    fn(**inputs).backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-type", default="vit_b", help="a SAM v1 or SAM 2.1 model type (default vit_b)")
    parser.add_argument("--image-size", type=int, nargs=2, default=(160, 256), metavar=("H", "W"))
    parser.add_argument("--masks", type=int, default=16, help="K, prompts of one image (default 16)")
    parser.add_argument("--rounds", type=int, default=6, help="timed rounds (default 6), after one warm-up")
    parser.add_argument("--out", help="also write the figures to this JSON file")
    args = parser.parse_args()
    size = tuple(args.image_size)
    model = families.build(args.model_type, "random", size)
    model.module.train().requires_grad_(True)
    probe = model.encode(torch.zeros(1, 3, *size))
    probe = getattr(probe, "embedding", probe)
    run = decoder_side(model, size)
    report: dict[str, object] = {"model_type": args.model_type, "image_size": list(size), "k": args.masks,
                                 "threads": torch.get_num_threads(), "torch": torch.__version__}
    for name, clicks in (("round 1: 1 point, 3 outputs", 1), ("round 3: 3 points + logits, 1 output", 3)):
        inputs = _inputs(args.masks, size, tuple(probe.shape[-2:]), probe.shape[1], clicks)
        breaks = torch._dynamo.explain(run)(**inputs).graph_break_count
        compiled = torch.compile(run, dynamic=False)
        first = _timed(compiled, inputs)
        _timed(run, inputs)
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for _ in range(args.rounds):
            times["eager"].append(_timed(run, inputs))
            times["compiled"].append(_timed(compiled, inputs))
        row = {mode: {"best": min(t), "median": statistics.median(t)} for mode, t in times.items()}
        row.update(first_compiled_call_s=first, graph_breaks=breaks,
                   speedup_best=min(times["eager"]) / min(times["compiled"]))
        report[name] = row
        print(f"{name}: eager {row['eager']['best']:.3f} s ({row['eager']['median']:.3f}), compiled "
              f"{row['compiled']['best']:.3f} s ({row['compiled']['median']:.3f}): {row['speedup_best']:.2f}x; "
              f"first compiled call {first:.1f} s, {breaks} graph breaks")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
