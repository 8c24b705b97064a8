"""The training step with the static-K compiled decoder side against the eager one (performance issue, item 4).

    python benchmarks/static_k.py --rounds 8 --out benchmarks/results/static_k/vit_b_160x256_k16.json

One ``LoRASAM`` step (LoRA rank 4, one synthetic image of K targets, 3 iterations: forward, loss, backward,
AdamW) with three decoder sides on the same module (``LoRASAM.decoder``):

- ``eager``: the default (``decoder_side.EagerDecoder``);
- ``static_eager``: the static-K path run eagerly, prompts padded to K rows and the loss over the frame (what
  the padding costs);
- ``static_compiled``: the same compiled by ``torch.compile`` (Inductor, ``dynamic=False``):
  ``ComputeOptions(compile_decoder=True)``.

First the compile warm-up: compiled steps with new prompts until a step compiles nothing new (its seconds
reported: what a run pays once), and a check that, for the same prompts, the compiled step's loss and
gradients are the eager step's. Then ``--rounds`` rounds; each times every variant once on the round's
prompts, in turn, so that machine drift hits all alike. FLOP floor as in ``train_step.py``: the eager
step's forward + backward FLOPs over the measured float32 matmul rate.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_machine import cpu_model, matmul_rate, sync  # noqa: E402
from bench_profile import count_flops  # noqa: E402
from bench_step import Stepper, load_batch, to_device  # noqa: E402

from lora_sam.data.synth import make_synthetic  # noqa: E402
from lora_sam.models.families import data_frame  # noqa: E402
from lora_sam.training.decoder_side import EagerDecoder, StaticKDecoder  # noqa: E402
from lora_sam.training.module import LoRASAM  # noqa: E402

VARIANTS = ("eager", "static_eager", "static_compiled")


def step(module: LoRASAM, batch: dict, seed: int, optimizer: torch.optim.Optimizer | None) -> tuple[torch.Tensor, float]:
    """One step with the module's decoder side and prompt seed ``seed``; (loss, seconds)."""
    device = batch["image"].device
    sync(device)
    start = time.perf_counter()
    module.zero_grad(set_to_none=True)
    loss = module.interactive_step(batch, torch.Generator().manual_seed(seed)).mean("total")
    loss.backward()
    if optimizer is not None:
        optimizer.step()
    sync(device)
    return loss.detach(), time.perf_counter() - start


def _grads(module: LoRASAM) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None])


def warm_up(module: LoRASAM, batch: dict, compiled: StaticKDecoder, max_steps: int) -> dict[str, object]:
    """Compiled steps until one compiles nothing new; then the same prompts eagerly and compiled, compared."""
    from torch._dynamo.utils import counters

    module.decoder = compiled
    start, seeds = time.perf_counter(), []
    for seed in range(10_000, 10_000 + max_steps):
        before = counters["stats"]["unique_graphs"]
        step(module, batch, seed, None)
        seeds.append(seed)
        if counters["stats"]["unique_graphs"] == before and len(seeds) > 1:
            break
    seconds = time.perf_counter() - start
    module.decoder = EagerDecoder(module.promptable, module.recipe)
    eager_loss, _ = step(module, batch, 7, None)
    eager_grads = _grads(module)
    module.decoder = compiled
    compiled_loss, _ = step(module, batch, 7, None)
    return {"compile_warmup_s": seconds, "warmup_steps": len(seeds), "graphs": counters["stats"]["unique_graphs"],
            "graph_breaks": sum(counters["graph_break"].values()),
            "loss_eager": float(eager_loss), "loss_compiled": float(compiled_loss),
            "grad_relative_difference": float((_grads(module) - eager_grads).norm() / eager_grads.norm())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-type", default="vit_b")
    parser.add_argument("--image-size", type=int, nargs=2, default=(160, 256), metavar=("H", "W"))
    parser.add_argument("--masks", type=int, default=16, help="K, targets of the image (default 16)")
    parser.add_argument("--rounds", type=int, default=8, help="timed rounds (default 8)")
    parser.add_argument("--max-warmup-steps", type=int, default=12)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="inductor",
                        help="torch.compile's backend (default inductor; eager: Dynamo's graphs without code generation; "
                             "none: not compiled, the static-K path run eagerly)")
    parser.add_argument("--data", help="SA-1B folder with an image of K masks (default: 4 synthetic images)")
    parser.add_argument("--out", help="also write the figures to this JSON file")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*RANDOM weights.*")
    device = torch.device(args.device)
    torch.manual_seed(0)
    size = tuple(args.image_size)
    module = LoRASAM(4, 1, model_type=args.model_type, checkpoint="random", image_size=size,
                     masks_per_image=args.masks).to(device).train()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or str(Path(tmp) / "sa1b")
        if args.data is None:
            make_synthetic(data, 4, seed=0)
        batch = to_device(load_batch(data, size, args.masks, 0, data_frame(args.model_type, size)[1]), device)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-6)
    decoders = {"eager": EagerDecoder(module.promptable, module.recipe),
                "static_eager": StaticKDecoder(module.promptable, module.recipe, backend=None),
                "static_compiled": StaticKDecoder(module.promptable, module.recipe, backend=None if args.backend == "none" else args.backend)}
    report: dict[str, object] = {"model_type": args.model_type, "image_size": list(size), "k": args.masks,
                                 "device": cpu_model() if device.type == "cpu" else torch.cuda.get_device_name(device),
                                 "threads": torch.get_num_threads(), "torch": torch.__version__, "backend": args.backend}
    report.update(warm_up(module, batch, decoders["static_compiled"], args.max_warmup_steps))
    print(json.dumps(report, indent=1), flush=True)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        for name in VARIANTS:
            module.decoder = decoders[name]
            times[name].append(step(module, batch, r, optimizer)[1])
    module.decoder = decoders["eager"]
    stepper = Stepper(module, batch, "lora", 0, device)
    flops = count_flops(stepper)["total"]
    rate = matmul_rate(device)
    floor = flops / (rate * 1e9)
    for name in VARIANTS:
        best, median = min(times[name]), statistics.median(times[name])
        report[name] = {"best_s": best, "median_s": median, "best_over_floor": best / floor}
        print(f"{name}: best {best:.3f} s, median {median:.3f} s, {best / floor:.2f}x the FLOP floor", flush=True)
    report.update(flops=flops, matmul_gflops=rate, floor_s=floor, times=times,
                  compiled_speedup_best=min(times["eager"]) / min(times["static_compiled"]),
                  compiled_speedup_median=statistics.median(times["eager"]) / statistics.median(times["static_compiled"]))
    print(f"compiled vs eager: {report['compiled_speedup_best']:.2f}x best, {report['compiled_speedup_median']:.2f}x "
          f"median; floor {floor:.3f} s ({flops / 1e9:.1f} GFLOP at {rate:.0f} GFLOP/s)")
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
