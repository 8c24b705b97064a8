"""Training-step benchmark: LoRA vs fully unfrozen vs a naive re-encoding step (issue 4).

One *step* is what ``LoRASAM.training_step`` does for one batch plus the optimiser: the
interactive forward (``recipe.interactive_step`` through ``LoRASAM``: image encoder once per image, then for K
target masks a point sequence of up to ``--iterations`` clicks or one noisy box, all targets
of a prompt type decoded in one call per iteration), the loss (mean over decoded prompts, as
``_shared_step``), ``backward`` and ``AdamW.step`` over the trainable parameters.

Modes (each runs in its own subprocess, so peak memory is measured per mode):

* ``lora``  (a): LoRA rank 4, alpha 1 (``LoRASAM(4, 1)``), the library's step.
* ``full``  (b): every SAM parameter trainable (``finetune="full"``), same step.
* ``naive`` (c): LoRA, but ``interactive_step`` is called once per target mask with a batch whose
  ``targets`` holds just that mask, so the image encoder runs K times per image (one
  ``backward`` per target, gradients accumulated, one optimiser step).  It is timed over
  ``--naive-targets`` targets per step and scaled to K:
  ``t_step(K) = (t_step(n) - t_opt) * K / n + t_opt``.

Throughput units:

* **targets/s**: target masks trained per second (K per image and step).  The headline "prompts
  per second": each target is one prompt *sequence* (a point with up to ``iterations`` clicks, or
  one box).
* **decodes/s**: decoded prompts per second, i.e. (target, iteration) pairs sent through the mask
  decoder: a point target counts ``iterations``, a box target 1 (expected 2K per image at
  ``point_prob=0.5`` and 3 iterations).

Peak memory is measured in the mode's subprocess above the baseline taken after the model, the
optimiser and the batch are built (CPU: ``/proc/self/status`` VmHWM, reset through
``/proc/self/clear_refs``, minus VmRSS at the baseline; CUDA: ``torch.cuda.max_memory_allocated``
minus the allocated bytes at the baseline).  It covers warm-up and timed steps, so it includes
gradients and AdamW state.

FLOPs of one step's forward + backward (``torch.utils.flop_counter.FlopCounterMode``: matmuls,
convolutions, attention; the optimiser's elementwise work is not counted) over the measured
float32 matmul rate of the same machine and thread count (a 2048x2048 @ 2048x2048 matmul, median
of repeats) give the *FLOP floor*: the step could not run faster than FLOPs / rate.

Usage::

    python benchmarks/train_step.py                            # CPU, ViT-B 160x256, K=16, 3 iterations
    python benchmarks/train_step.py --device cuda --steps 10
    python benchmarks/train_step.py --markdown docs/benchmarks/train-step.md   # also append the section to its page
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

# the helper modules beside this file: machine probes, the step, its profile and FLOPs, the Markdown
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_machine import (  # noqa: E402
    await_quiet,
    cpu_busy,
    cpu_model,
    idle_budget,
    matmul_rate,
    proc_status,
    reset_peak_rss,
    sync,
    wait_idle,
)
from bench_profile import count_flops, profile_parts, torch_profile  # noqa: E402
from bench_report import markdown_section, profile_report, table, targets_report  # noqa: E402
from bench_step import Stepper, load_batch, to_device  # noqa: E402

MODES = ("lora", "full", "naive")


# --------------------------------------------------------------------------- worker


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One mode's measurements (``--worker MODE``, in the mode's own process): the timed steps, peak memory,
    FLOPs, the machine's matmul rate before and after and, for (a), the profile."""
    import torch

    warnings.filterwarnings("ignore", message=".*RANDOM weights.*")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    stepper = build_stepper(args, device)
    idle_budget(min(args.wait_idle, 60))
    await_quiet()
    rate = matmul_rate(device)
    baseline = memory_baseline(device)
    for _ in range(args.warmup):
        stepper()
    idle_budget(args.wait_idle)
    timed = timed_steps(stepper, args.steps)
    result = step_result(stepper, rate, timed, memory_peak(device, baseline))
    if stepper.mode != "naive" or args.flops_naive:
        result["flops"] = step_flops(stepper)
    idle_budget(args.wait_idle / 2)
    if args.profile and stepper.mode == "lora":
        result.update(profile_lora(stepper, args))
    await_quiet()
    result["matmul_gflops_after"] = matmul_rate(device, repeats=5)
    result["matmul_gflops_before"] = rate
    result["matmul_gflops"] = max(rate, result["matmul_gflops_after"])
    return result


def build_stepper(args: argparse.Namespace, device: Any) -> Stepper:
    """The mode's ``LoRASAM`` (rank 4, alpha 1) and its batch on ``device``, as a ``Stepper``."""
    from lora_sam.models.families import data_frame
    from lora_sam.training.module import LoRASAM

    mode = args.worker
    module = LoRASAM(4, 1, model_type=args.model_type, checkpoint="random", image_size=tuple(args.image_size),
                     finetune="full" if mode == "full" else "lora", iterations=args.iterations,
                     masks_per_image=args.masks, fused_attention=args.compute != "official",
                     grad_checkpointing=args.compute == "fused+ckpt").to(device).train()
    frame = data_frame(args.model_type, tuple(args.image_size))[1]
    batch = to_device(load_batch(args.data, tuple(args.image_size), args.masks, args.seed, frame), device)
    return Stepper(module, batch, mode, args.naive_targets, device)


def memory_baseline(device: Any) -> dict[str, Any]:
    """Memory with the model, optimiser (no state yet) and batch in place: ``base_bytes`` (peaks are
    measured above it), ``model_rss_bytes`` and ``peak_reset`` (whether the CPU peak could be reset)."""
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base_mem = torch.cuda.memory_allocated(device)
        reset = True
    else:
        reset = reset_peak_rss()
        base_mem = proc_status("VmRSS")
    model_rss = proc_status("VmRSS")
    return {"base_bytes": base_mem, "model_rss_bytes": model_rss, "peak_reset": reset}


def memory_peak(device: Any, baseline: dict[str, Any]) -> dict[str, Any]:
    """The process's peak memory since ``baseline``: above it (``peak_bytes``) and absolute, and the
    baseline's own entries."""
    import torch

    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - baseline["base_bytes"]
        peak_abs = torch.cuda.max_memory_allocated(device)
    else:
        peak_abs = proc_status("VmHWM")
        peak = peak_abs - baseline["base_bytes"] if baseline["peak_reset"] else peak_abs
    return {"peak_bytes": peak, "peak_abs_bytes": peak_abs, **baseline}


def timed_steps(stepper: Stepper, steps: int) -> dict[str, list]:
    """``steps`` steps, each after waiting (within the budget) for a quiet machine: their wall times, CPU
    times, optimiser times and counts (``Stepper``'s targets, decodes and loss)."""
    device = stepper.device
    times, cpu_times, opt_times, counts = [], [], [], []
    for _ in range(steps):
        await_quiet()
        sync(device)
        t, c = time.perf_counter(), time.process_time()
        info = stepper()
        sync(device)
        times.append(time.perf_counter() - t)
        cpu_times.append(time.process_time() - c)
        opt_times.append(stepper.optimizer_time)
        counts.append(info)
    return {"times": times, "cpu_times": cpu_times, "opt_times": opt_times, "counts": counts}


def step_result(stepper: Stepper, rate: float, timed: dict[str, list],
                memory: dict[str, Any]) -> dict[str, Any]:
    """The mode's step time (the best of the timed steps; (c) scaled from its timed targets to K), throughput
    and memory, with ``rate`` as the machine's matmul rate."""
    import torch

    times, counts = timed["times"], timed["counts"]
    step_s = min(times)  # best of the timed steps: other processes only add time
    opt_s = min(timed["opt_times"])
    targets = statistics.mean(c["targets"] for c in counts)
    decodes = statistics.mean(c["decodes"] for c in counts)
    k = len(stepper.batch["targets"][0])
    if stepper.mode == "naive":  # scale the n timed targets to K
        n = stepper.naive_targets
        step_k = (step_s - opt_s) * k / n + opt_s
        decodes_k = decodes * k / max(targets, 1)
        targets_k = k
    else:
        step_k, decodes_k, targets_k = step_s, decodes, targets
    return {
        "mode": stepper.mode, "device": str(stepper.device), "threads": torch.get_num_threads(),
        "trainable": stepper.trainable, "total_params": sum(p.numel() for p in stepper.module.parameters()),
        "matmul_gflops": rate, "step_times_s": times, "step_cpu_s": timed["cpu_times"], "step_s": step_k,
        "measured_step_s": step_s, "median_step_s": statistics.median(times), "optimizer_s": opt_s,
        "targets_per_step": targets_k, "decodes_per_step": decodes_k, "timed_targets_per_step": targets,
        "targets_per_s": targets_k / step_k, "decodes_per_s": decodes_k / step_k,
        **memory, "loss": [c["loss"] for c in counts],
    }


def step_flops(stepper: Stepper) -> dict[str, float]:
    """``count_flops`` of one step; for (c), scaled from its timed targets to K."""
    flops = count_flops(stepper)
    if stepper.mode == "naive":
        k = len(stepper.batch["targets"][0])
        flops = {key: v * k / stepper.naive_targets for key, v in flops.items()}
    return flops


def profile_lora(stepper: Stepper, args: argparse.Namespace) -> dict[str, Any]:
    """The profile of (a): wall time by part, ``torch.profiler`` by kind of op and, for ViT-B, the matmul rate
    at the encoder's own shapes."""
    result = {"parts": profile_parts(stepper, args.profile),
              "torch_profile": torch_profile(stepper, args.top_ops, rank=4, repeats=args.profile)}
    # matmul rate at the encoder's own shapes (windowed blocks: 2 windows x 196 tokens, width 768)
    device = stepper.device
    if args.model_type == "vit_b":
        result["matmul_gflops_shapes"] = {
            "392x768 @ 768x2304 (qkv, windowed)": matmul_rate(device, shape=(392, 768, 2304), repeats=5),
            "160x768 @ 768x3072 (MLP lin1)": matmul_rate(device, shape=(160, 768, 3072), repeats=5),
        }
    return result


# --------------------------------------------------------------------------- driver


def run_mode(mode: str, args: argparse.Namespace, data: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", mode, "--data", data, "--device", args.device,
           "--model-type", args.model_type, "--masks", str(args.masks), "--iterations", str(args.iterations),
           "--steps", str(args.naive_steps if mode == "naive" else args.steps),
           "--warmup", str(args.warmup), "--threads", str(args.threads), "--seed", str(args.seed),
           "--naive-targets", str(args.naive_targets), "--wait-idle", str(args.wait_idle), "--profile", str(args.profile),
           "--top-ops", str(args.top_ops), "--image-size", *map(str, args.image_size), "--compute", args.compute]
    if args.flops_naive:
        cmd.append("--flops-naive")
    busy0, total0 = cpu_busy()
    usage0 = os.times()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    elapsed = time.perf_counter() - t0
    usage1 = os.times()
    busy1, total1 = cpu_busy()
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"{mode} worker failed with exit status {proc.returncode}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    own = (usage1.children_user - usage0.children_user) + (usage1.children_system - usage0.children_system)
    ncpu = os.cpu_count() or 1
    machine = (busy1 - busy0) / max(total1 - total0, 1) * ncpu * elapsed  # CPU-seconds used by everyone
    result["wall_s"] = elapsed
    result["others_cpu_share"] = max(0.0, machine - own) / (ncpu * elapsed)
    return result


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's options (``benchmarks/memory_table.py`` parses its cells with it too)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="timed steps of (a) and (b) (default 3)")
    parser.add_argument("--naive-steps", type=int, default=2, help="timed steps of (c) (default 2)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up steps per mode (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]")
    parser.add_argument("--model-type", default="vit_b", help="vit_b (default), vit_l, vit_h, tiny")
    parser.add_argument("--image-size", type=int, nargs=2, default=(160, 256), metavar=("H", "W"))
    parser.add_argument("--masks", type=int, default=16, help="K, target masks per image (default 16)")
    parser.add_argument("--iterations", type=int, default=3, help="interactive iterations (default 3)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of lora,full,naive")
    parser.add_argument("--compute", choices=("official", "fused", "fused+ckpt"), default="fused",
                        help="the encoder's attention (SAM's official code or the fused one, LoRASAM's default) and "
                             "activation checkpointing of its blocks (default fused)")
    parser.add_argument("--naive-targets", type=int, default=4,
                        help="targets timed per naive step, scaled to K (default 4)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", type=int, default=2, help="instrumented steps of (a) for the profile (0: none)")
    parser.add_argument("--top-ops", type=int, default=12)
    parser.add_argument("--flops-naive", action="store_true", help="also count the FLOPs of (c) (slow)")
    parser.add_argument("--wait-idle", type=float, default=0.0,
                        help="shared machines: before each mode, and in total over a mode's timed steps before each "
                             "step, wait up to this many seconds for the CPU to be idle (default 0: no waiting)")
    parser.add_argument("--data", default=None, help="SA-1B folder (default: synthetic images in a temp dir)")
    parser.add_argument("--markdown", default=None, help="append the '## Training step' section to this file")
    parser.add_argument("--note", default="", help="extra sentence for the Markdown section")
    parser.add_argument("--json", default=None, help="write the raw results here")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; choose from {', '.join(MODES)}")
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__)] + (sys.argv[1:] if argv is None else argv))
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            from lora_sam.data.synth import make_synthetic

            data = str(Path(tmp) / "sa1b")
            make_synthetic(data, 4, seed=args.seed)
        results = {}
        for mode in modes:
            if args.wait_idle > 0:
                wait_idle(args.wait_idle)
            print(f"running {mode} ...", file=sys.stderr, flush=True)
            results[mode] = run_mode(mode, args, data)
            results[mode]["profile_steps"] = args.profile
    machine = (f"{cpu_model()}, {os.cpu_count()} cores, torch {__import__('torch').__version__}, "
               f"{args.threads} threads" if args.device == "cpu" else
               f"{__import__('torch').cuda.get_device_name(args.device)}, torch {__import__('torch').__version__}")
    text = table(results)
    print(text)
    print()
    for line in targets_report(results):
        print(line)
    if "lora" in results:
        print()
        print("\n".join(profile_report(results["lora"])))
    others = max(r["others_cpu_share"] for r in results.values())
    shared = (f"Other processes used up to {others:.0%} of the machine's CPU time while a mode ran "
              f"(measured from /proc/stat): the machine was shared"
              if others > 0.05 else "The machine was otherwise idle (other processes used "
              "< 5 % of its CPU time while each mode ran, from /proc/stat)")
    print(f"\n{shared}.")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.markdown:
        section = markdown_section(results, args, command, machine, shared)
        path = Path(args.markdown)
        prefix = "" if path.exists() else "# Benchmarks\n"
        with path.open("a") as f:
            f.write(prefix + section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
