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
    python benchmarks/train_step.py --markdown BENCHMARKS.md   # also append the "Training step" section
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

MODES = ("lora", "full", "naive")
MODE_LABEL = {"lora": "(a) LoRA", "full": "(b) full fine-tune", "naive": "(c) naive (re-encode per target)"}


# --------------------------------------------------------------------------- helpers


def _proc_status(field: str) -> int:
    """A ``kB`` field of /proc/self/status, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    with open("/proc/stat") as f:
        values = [float(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)
    return sum(values) - idle, sum(values)


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: Any, size: int = 2048, repeats: int = 7, shape: tuple[int, int, int] | None = None) -> float:
    """Measured float32 matmul rate in GFLOP/s (best of ``repeats``: on a shared machine other
    processes only slow it down), ``(size,size)@(size,size)`` or ``shape = (m, k, n)``."""
    import torch

    m, k, n = shape or (size, size, size)
    a = torch.randn(m, k, device=device)
    b = torch.randn(k, n, device=device)
    inner = max(1, int(2e9 // (2 * m * k * n)))  # about 2 GFLOP per timing
    for _ in range(2):
        a @ b
    _sync(device)
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(inner):
            a @ b
        _sync(device)
        rates.append(2 * m * k * n * inner / (time.perf_counter() - t) / 1e9)
    return max(rates)


# --------------------------------------------------------------------------- the step


def load_batch(data: str, image_size: tuple[int, int], masks: int, seed: int, frame: str) -> dict[str, Any]:
    """One real synthetic SA-1B image with its masks, through the library's loader path, in the model
    family's ``frame`` (SAM 2.1: a square the image fills)."""
    from lora_sam.data.loaders import collate, open_dataset

    dataset = open_dataset(data, image_size=image_size, masks_per_image=masks, seed=seed, frame=frame)
    for i in range(len(dataset)):
        sample = dataset[i]
        if isinstance(sample, dict) and len(sample["targets"]) >= masks:
            return collate([sample])
    raise RuntimeError(f"no image in {data} has {masks} masks; make more synthetic images or lower --masks")


def to_device(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    out = dict(batch)
    out["image"] = batch["image"].to(device)
    out["input_size"] = batch["input_size"].to(device)
    out["masks"] = [m.to(device) for m in batch["masks"]]
    out["targets"] = [t.to(device) for t in batch["targets"]]
    return out


def _terms(out: Any) -> dict[tuple[int, str], Any]:
    """``{(iteration, term): (sum over prompts, prompt count)}`` of an ``interactive_step`` result."""
    return out["terms"] if isinstance(out, dict) else out.terms


def mean_loss(out: Any):  # noqa: ANN201
    """The loss ``LoRASAM._shared_step`` returns: total summed over prompts / prompt count."""
    terms = _terms(out)
    count = sum(n for (_, name), (_, n) in terms.items() if name == "total")
    return sum(s for (_, name), (s, _) in terms.items() if name == "total") / count, count


def decoded_prompts(out: Any) -> tuple[int, int]:
    """(targets, decoded prompts) with a loss in one ``interactive_step`` result: targets are the
    prompts of iteration 1 (one per target mask), decoded prompts those of every iteration."""
    terms = _terms(out)
    targets = terms.get((1, "total"), (0, 0))[1]
    decodes = sum(n for (_, name), (_, n) in terms.items() if name == "total")
    return int(targets), int(decodes)


class Stepper:
    """One optimisation step of a mode; ``profile`` hooks can time its parts."""

    def __init__(self, module: Any, batch: dict[str, Any], mode: str, naive_targets: int, device: Any) -> None:
        import torch

        self.module, self.batch, self.mode, self.device = module, batch, mode, device
        params = [p for p in module.parameters() if p.requires_grad]
        self.trainable = sum(p.numel() for p in params)
        self.optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
        self.step_index = 0
        self.backward_time = 0.0
        self.optimizer_time = 0.0
        k = len(batch["targets"][0])
        self.naive_targets = min(naive_targets, k) if mode == "naive" else k

    def _generator(self):  # noqa: ANN202
        import torch

        return torch.Generator().manual_seed(1_000 + self.step_index)

    def __call__(self, targets_limit: int | None = None) -> dict[str, float]:
        """One step; returns {"targets", "decodes", "loss"}."""
        self.step_index += 1
        generator = self._generator()
        self.optimizer.zero_grad(set_to_none=True)
        self.backward_time = 0.0
        targets = decodes = 0
        loss_value = 0.0
        if self.mode == "naive":
            all_targets = self.batch["targets"][0]
            for j in range(targets_limit or self.naive_targets):
                single = dict(self.batch, targets=[all_targets[j : j + 1]])
                out = self.module.interactive_step(single, generator)
                t, d = decoded_prompts(out)
                targets, decodes = targets + t, decodes + d
                if not _terms(out):
                    continue
                loss, _ = mean_loss(out)
                self._backward(loss / len(all_targets))
                loss_value += float(loss.detach()) / len(all_targets)
        else:
            out = self.module.interactive_step(self.batch, generator)
            targets, decodes = decoded_prompts(out)
            loss, _ = mean_loss(out)
            self._backward(loss)
            loss_value = float(loss.detach())
        _sync(self.device)
        t = time.perf_counter()
        self.optimizer.step()
        _sync(self.device)
        self.optimizer_time = time.perf_counter() - t
        return {"targets": targets, "decodes": decodes, "loss": loss_value}

    def _backward(self, loss: Any) -> None:
        _sync(self.device)
        t = time.perf_counter()
        loss.backward()
        _sync(self.device)
        self.backward_time += time.perf_counter() - t


# --------------------------------------------------------------------------- profiling


PROFILED = ("encode", "decode", "upscale", "point_sample", "box_sample", "sample_points",
            "sample_error_points", "noisy_boxes", "masks_to_boxes", "mask_iou")


@contextlib.contextmanager
def timed_parts(stepper: Stepper):  # noqa: ANN201
    """Wall time of each part of ``interactive_step`` (forward), of backward split at the image
    embedding (decoder side vs encoder side, by a gradient hook on the embedding), and of the
    optimiser.  Patches the names ``lora_sam.recipe`` and ``lora_sam.model`` (``SamV1``) look up,
    for the duration only."""
    import lora_sam.model as lmodel
    import lora_sam.recipe as lrecipe

    times: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    device = stepper.device
    originals = {(lib, name): getattr(lib, name) for lib in (lrecipe, lmodel) for name in PROFILED
                 if hasattr(lib, name) and (lib is lrecipe or name in ("encode", "decode", "upscale"))}
    hook_times: list[float] = []

    def wrap(name: str, fn: Any) -> Any:
        def inner(*args: Any, **kwargs: Any) -> Any:
            _sync(device)
            t = time.perf_counter()
            result = fn(*args, **kwargs)
            _sync(device)
            times[name] += time.perf_counter() - t
            calls[name] += 1
            if name == "encode" and result.requires_grad:
                def hook(grad: Any) -> None:
                    _sync(device)
                    hook_times.append(time.perf_counter())
                result.register_hook(hook)
            return result
        return inner

    loss_fn = lrecipe.sam_loss
    lrecipe.sam_loss = wrap("loss (focal+dice+IoU MSE)", loss_fn)
    for (lib, name), fn in originals.items():
        setattr(lib, name, wrap(name, fn))
    original_backward = stepper._backward

    def backward(loss: Any) -> None:
        hook_times.clear()
        _sync(device)
        t = time.perf_counter()
        loss.backward()
        _sync(device)
        end = time.perf_counter()
        stepper.backward_time += end - t
        if hook_times:
            times["backward: decoder + loss (to the embedding)"] += hook_times[0] - t
            times["backward: image encoder"] += end - hook_times[0]
        else:
            times["backward"] += end - t

    stepper._backward = backward  # type: ignore[method-assign]
    try:
        yield times, calls
    finally:
        for (lib, name), fn in originals.items():
            setattr(lib, name, fn)
        lrecipe.sam_loss = loss_fn
        stepper._backward = original_backward  # type: ignore[method-assign]


def profile_parts(stepper: Stepper, steps: int) -> dict[str, Any]:
    """Wall time of each part (see ``timed_parts``) in the fastest of ``steps`` instrumented steps
    (on a shared machine the fastest is the least disturbed)."""
    best: dict[str, Any] | None = None
    for _ in range(steps):
        await_quiet()
        with timed_parts(stepper) as (times, calls):
            _sync(stepper.device)
            t = time.perf_counter()
            stepper()
            _sync(stepper.device)
            wall = time.perf_counter() - t
        parts = dict(times)
        parts["optimizer (AdamW.step)"] = stepper.optimizer_time
        parts["other (Python glue, masking, indexing, records, cat)"] = wall - sum(parts.values())
        if best is None or wall < best["step_s"]:
            best = {"step_s": wall, "parts_s": parts, "calls": dict(calls)}
    assert best is not None
    return best


MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm"}
CONV_OPS = {"aten::mkldnn_convolution", "aten::convolution_backward", "aten::_convolution", "aten::convolution",
            "aten::conv2d", "aten::conv_transpose2d", "aten::slow_conv_transpose2d", "aten::_slow_conv2d_forward",
            "aten::_slow_conv2d_backward", "aten::mkldnn_convolution_backward"}
LAYOUT_OPS = {"aten::copy_", "aten::cat", "aten::constant_pad_nd", "aten::clone", "aten::contiguous", "aten::index",
              "aten::index_put_", "aten::_index_put_impl_", "aten::repeat_interleave", "aten::index_select",
              "aten::stack", "aten::zero_", "aten::fill_", "aten::empty", "aten::empty_strided", "aten::_to_copy",
              "aten::resize_", "aten::new_zeros", "aten::zeros", "aten::zeros_like", "aten::empty_like"}


def _category(name: str, shapes: list, rank: int, image_size: tuple[int, int] | None = None) -> str:
    if image_size is not None and any(isinstance(shape, list | tuple) and len(shape) >= 2
                                      and tuple(shape[-2:]) == tuple(image_size) for shape in shapes):
        return "full-resolution (H x W) tensors: upscaled logits, loss, IoU, mask indexing, image input"
    if name in MATMUL_OPS:
        mats = [tuple(shape) for shape in shapes if isinstance(shape, list | tuple) and len(shape) == 2]
        lora = name in ("aten::mm", "aten::addmm") and any(rank in shape for shape in mats)
        return "matmul, LoRA low-rank (a 2-D operand with a dim = rank)" if lora else "matmul (base layers, attention)"
    if name in CONV_OPS:
        return "convolution (patch embed, neck, mask down/upscaling)"
    if name in LAYOUT_OPS:
        return "copies, padding, indexing, allocation"
    if "optim" in name.lower() or name.startswith("aten::_foreach") or name == "Optimizer.step#AdamW.step":
        return "optimizer"
    if name.startswith("aten::"):
        return "elementwise, norms, softmax, GELU, reductions (non-matmul math)"
    return "framework (autograd nodes, profiler labels)"


def torch_profile(stepper: Stepper, top: int, rank: int = 4, repeats: int = 1) -> dict[str, Any]:
    """``torch.profiler`` of one step of ``stepper`` and of the image encoder alone (forward +
    backward with a random gradient at the embedding), the fastest of ``repeats`` each: top ops
    by self time, and self time by category (matmul / LoRA matmul / conv / copies / other math)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from lora_sam.model import encode

    cuda = stepper.device.type == "cuda"
    image_size = tuple(stepper.batch["image"].shape[-2:])
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    key = (lambda e: e.self_device_time_total) if cuda else (lambda e: e.self_cpu_time_total)

    def summarise(prof: Any, wall: float) -> dict[str, Any]:
        by_shape = prof.key_averages(group_by_input_shape=True)
        categories: dict[str, float] = defaultdict(float)
        for e in by_shape:
            categories[_category(e.key, list(e.input_shapes or []), rank, image_size)] += key(e) / 1e6
        events = prof.key_averages()
        total = sum(key(e) for e in events) or 1
        ops = [{"op": e.key, "calls": e.count, "self_ms": key(e) / 1e3, "share": key(e) / total}
               for e in sorted(events, key=key, reverse=True)[:top]]
        return {"wall_s": wall, "self_s": total / 1e6, "categories": dict(categories), "ops": ops}

    step: dict[str, Any] | None = None
    for _ in range(repeats):  # keep the fastest (least disturbed) profiled step
        await_quiet()
        with profile(activities=activities, record_shapes=True) as prof:
            t = time.perf_counter()
            stepper()
            _sync(stepper.device)
            wall = time.perf_counter() - t
        if step is None or wall < step["wall_s"]:
            step = summarise(prof, wall)

    module, batch = stepper.module, stepper.batch
    emb = encode(module.sam, batch["image"], batch["input_size"])  # warm
    grad = torch.randn_like(emb)
    emb.backward(grad)
    stepper.optimizer.zero_grad(set_to_none=True)
    encoder: dict[str, Any] | None = None
    for _ in range(repeats):
        await_quiet()
        with profile(activities=activities, record_shapes=True) as prof:
            t = time.perf_counter()
            emb = encode(module.sam, batch["image"], batch["input_size"])
            emb.backward(grad)
            _sync(stepper.device)
            wall = time.perf_counter() - t
        stepper.optimizer.zero_grad(set_to_none=True)
        if encoder is None or wall < encoder["wall_s"]:
            encoder = summarise(prof, wall)
    return {"step": step, "encoder": encoder}


# --------------------------------------------------------------------------- worker


def count_flops(stepper: Stepper) -> dict[str, float]:
    """FLOPs of one step: ``total`` forward + backward (the optimiser step is skipped), and the
    forward FLOPs of the image encoder / prompt encoder / mask decoder (``fwd:`` keys; the
    counter's per-module split of backward is not reliable, so only forward is split)."""
    from torch.utils.flop_counter import FlopCounterMode

    original_step = stepper.optimizer.step
    stepper.optimizer.step = lambda *a, **k: None  # type: ignore[method-assign]
    try:
        with FlopCounterMode(display=False) as counter:
            stepper()
    finally:
        stepper.optimizer.step = original_step  # type: ignore[method-assign]
    result = {"total": float(counter.get_total_flops())}
    original_backward = stepper._backward
    stepper._backward = lambda loss: None  # type: ignore[method-assign]
    try:
        with FlopCounterMode(display=False) as forward:
            stepper()
    finally:
        stepper._backward = original_backward  # type: ignore[method-assign]
    counts = forward.get_flop_counts()
    result["forward"] = float(forward.get_total_flops())
    for part, cls in (("image_encoder", "ImageEncoderViT"), ("prompt_encoder", "PromptEncoder"),
                      ("mask_decoder", "MaskDecoder")):
        if cls in counts:
            result["fwd:" + part] = float(sum(counts[cls].values()))
    return result


def worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    warnings.filterwarnings("ignore", message=".*RANDOM weights.*")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    from lora_sam.module import LoRASAM

    mode = args.worker
    module = LoRASAM(4, 1, model_type=args.model_type, checkpoint="random", image_size=tuple(args.image_size),
                     finetune="full" if mode == "full" else "lora", iterations=args.iterations,
                     masks_per_image=args.masks, fused_attention=args.compute != "official",
                     grad_checkpointing=args.compute == "fused+ckpt").to(device).train()
    from lora_sam.families import data_frame

    frame = data_frame(args.model_type, tuple(args.image_size))[1]
    batch = to_device(load_batch(args.data, tuple(args.image_size), args.masks, args.seed, frame), device)
    stepper = Stepper(module, batch, mode, args.naive_targets, device)
    global _IDLE_DEADLINE
    _IDLE_DEADLINE = time.monotonic() + min(args.wait_idle, 60)
    await_quiet()
    rate = matmul_rate(device)

    # baseline memory: model, optimiser (no state yet) and batch in place
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base_mem = torch.cuda.memory_allocated(device)
        reset = True
    else:
        reset = _reset_peak_rss()
        base_mem = _proc_status("VmRSS")
    model_rss = _proc_status("VmRSS")

    for _ in range(args.warmup):
        stepper()
    times, cpu_times, opt_times, counts = [], [], [], []
    _IDLE_DEADLINE = time.monotonic() + args.wait_idle
    for _ in range(args.steps):
        await_quiet()
        _sync(device)
        t, c = time.perf_counter(), time.process_time()
        info = stepper()
        _sync(device)
        times.append(time.perf_counter() - t)
        cpu_times.append(time.process_time() - c)
        opt_times.append(stepper.optimizer_time)
        counts.append(info)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base_mem
        peak_abs = torch.cuda.max_memory_allocated(device)
    else:
        peak_abs = _proc_status("VmHWM")
        peak = peak_abs - base_mem if reset else peak_abs

    step_s = min(times)  # best of the timed steps: other processes only add time
    opt_s = min(opt_times)
    targets = statistics.mean(c["targets"] for c in counts)
    decodes = statistics.mean(c["decodes"] for c in counts)
    k = len(batch["targets"][0])
    if mode == "naive":  # scale the n timed targets to K
        n = stepper.naive_targets
        step_k = (step_s - opt_s) * k / n + opt_s
        decodes_k = decodes * k / max(targets, 1)
        targets_k = k
    else:
        step_k, decodes_k, targets_k = step_s, decodes, targets
    result: dict[str, Any] = {
        "mode": mode, "device": str(device), "threads": torch.get_num_threads(),
        "trainable": stepper.trainable, "total_params": sum(p.numel() for p in module.parameters()),
        "matmul_gflops": rate, "step_times_s": times, "step_cpu_s": cpu_times, "step_s": step_k, "measured_step_s": step_s,
        "median_step_s": statistics.median(times), "optimizer_s": opt_s, "targets_per_step": targets_k, "decodes_per_step": decodes_k,
        "timed_targets_per_step": targets, "targets_per_s": targets_k / step_k, "decodes_per_s": decodes_k / step_k,
        "peak_bytes": peak, "peak_abs_bytes": peak_abs, "base_bytes": base_mem, "model_rss_bytes": model_rss,
        "peak_reset": reset, "loss": [c["loss"] for c in counts],
    }
    if mode != "naive" or args.flops_naive:
        flops = count_flops(stepper)
        if mode == "naive":
            flops = {key: v * k / stepper.naive_targets for key, v in flops.items()}
        result["flops"] = flops
    _IDLE_DEADLINE = time.monotonic() + args.wait_idle / 2
    if args.profile and mode == "lora":
        result["parts"] = profile_parts(stepper, args.profile)
        result["torch_profile"] = torch_profile(stepper, args.top_ops, rank=4, repeats=args.profile)
        # matmul rate at the encoder's own shapes (windowed blocks: 2 windows x 196 tokens, width 768)
        if args.model_type == "vit_b":
            result["matmul_gflops_shapes"] = {
                "392x768 @ 768x2304 (qkv, windowed)": matmul_rate(device, shape=(392, 768, 2304), repeats=5),
                "160x768 @ 768x3072 (MLP lin1)": matmul_rate(device, shape=(160, 768, 3072), repeats=5),
            }
    await_quiet()
    result["matmul_gflops_after"] = matmul_rate(device, repeats=5)
    result["matmul_gflops_before"] = rate
    result["matmul_gflops"] = rate = max(rate, result["matmul_gflops_after"])
    return result


# --------------------------------------------------------------------------- driver


_IDLE_DEADLINE = 0.0


def await_quiet() -> None:
    """In a worker: wait (within the ``--wait-idle`` budget) until other processes leave the cores idle."""
    if _IDLE_DEADLINE > time.monotonic():
        wait_idle(_IDLE_DEADLINE - time.monotonic(), window_s=2.0, quiet=True)


def wait_idle(limit_s: float, threshold: float = 0.15, window_s: float = 3.0, quiet: bool = False) -> float:
    """Wait (at most ``limit_s``) until the machine's CPU use over ``window_s`` is under ``threshold``;
    returns the last measured use (share of all cores)."""
    deadline = time.monotonic() + limit_s
    while True:
        busy0, total0 = _cpu_busy()
        time.sleep(window_s)
        busy1, total1 = _cpu_busy()
        use = (busy1 - busy0) / max(total1 - total0, 1)
        if use < threshold or time.monotonic() > deadline:
            return use
        if not quiet:
            print(f"  machine busy ({use:.0%} CPU), waiting ...", file=sys.stderr, flush=True)
        time.sleep(1 if quiet else 10)


def run_mode(mode: str, args: argparse.Namespace, data: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", mode, "--data", data, "--device", args.device,
           "--model-type", args.model_type, "--masks", str(args.masks), "--iterations", str(args.iterations),
           "--steps", str(args.naive_steps if mode == "naive" else args.steps),
           "--warmup", str(args.warmup), "--threads", str(args.threads), "--seed", str(args.seed),
           "--naive-targets", str(args.naive_targets), "--wait-idle", str(args.wait_idle), "--profile", str(args.profile),
           "--top-ops", str(args.top_ops), "--image-size", *map(str, args.image_size), "--compute", args.compute]
    if args.flops_naive:
        cmd.append("--flops-naive")
    busy0, total0 = _cpu_busy()
    usage0 = os.times()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    elapsed = time.perf_counter() - t0
    usage1 = os.times()
    busy1, total1 = _cpu_busy()
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


def fmt_bytes(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def machine_rate(results: dict[str, dict[str, Any]]) -> float:
    """The machine's float32 matmul rate, GFLOP/s: the best measured in any mode's process."""
    return max(r["matmul_gflops"] for r in results.values())


def table(results: dict[str, dict[str, Any]]) -> str:
    rows = ["| mode | trainable params | step (s), best (median) | targets/s | decodes/s | peak memory above model | "
            "GFLOP/step (fwd+bwd) | FLOP floor (s) | step / floor |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for mode, r in results.items():
        flops = r.get("flops", {}).get("total")
        floor = flops / (machine_rate(results) * 1e9) if flops else None
        note = f" ({r['median_step_s']:.2f})" if mode != "naive" else (
            f" (scaled from {r['timed_targets_per_step']:g} targets)")
        rows.append(
            f"| {MODE_LABEL[mode]} | {r['trainable']:,} | {r['step_s']:.2f}{note} | {r['targets_per_s']:.2f} | "
            f"{r['decodes_per_s']:.2f} | {fmt_bytes(r['peak_bytes'])} | "
            f"{flops / 1e9:,.1f} | {floor:.3f} | {r['step_s'] / floor:.2f}x |" if flops else
            f"| {MODE_LABEL[mode]} | {r['trainable']:,} | {r['step_s']:.2f}{note} | {r['targets_per_s']:.2f} | "
            f"{r['decodes_per_s']:.2f} | {fmt_bytes(r['peak_bytes'])} | n/a | n/a | n/a |")
    return "\n".join(rows)


def targets_report(results: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    a, b, c = results.get("lora"), results.get("full"), results.get("naive")
    if a and c:
        ratio = a["targets_per_s"] / c["targets_per_s"]
        lines.append(f"- (a) >= 10x the prompts/s of (c): **{'met' if ratio >= 10 else 'NOT met'}**, "
                     f"{ratio:.1f}x ({a['targets_per_s']:.2f} vs {c['targets_per_s']:.2f} targets/s).")
    if a and b:
        share = a["peak_bytes"] / b["peak_bytes"]
        lines.append(f"- (a) peak memory <= 60 % of (b): **{'met' if share <= 0.6 else 'NOT met'}**, "
                     f"{share:.0%} ({fmt_bytes(a['peak_bytes'])} vs {fmt_bytes(b['peak_bytes'])} above the built "
                     f"model; absolute process peaks {fmt_bytes(a['peak_abs_bytes'])} vs {fmt_bytes(b['peak_abs_bytes'])}).")
    if a and "flops" in a:
        floor = a["flops"]["total"] / (machine_rate(results) * 1e9)
        lines.append(f"- (a) within 1.5x of its FLOP floor: **{'met' if a['step_s'] <= 1.5 * floor else 'NOT met'}**, "
                     f"{a['step_s'] / floor:.2f}x ({a['step_s']:.2f} s vs {floor:.2f} s = "
                     f"{a['flops']['total'] / 1e9:.0f} GFLOP / {machine_rate(results):.0f} GFLOP/s).")
    return lines


def profile_report(a: dict[str, Any]) -> list[str]:
    lines = []
    if "parts" in a:
        p = a["parts"]
        lines.append(f"Where the time of (a) goes (wall time in the fastest of {a['profile_steps']} instrumented "
                     f"steps, {p['step_s']:.2f} s; each part timed by wrapping the function `interactive_step` "
                     f"calls, backward split at the image embedding by a gradient hook):")
        lines.append("")
        lines.append("| part | s / step | share | calls / step |")
        lines.append("|---|---:|---:|---:|")
        for name, s in sorted(p["parts_s"].items(), key=lambda kv: -kv[1]):
            calls = p["calls"].get(name)
            lines.append(f"| {name} | {s:.3f} | {s / p['step_s']:.1%} | {'' if calls is None else f'{calls:g}'} |")
        lines.append("")
    if "flops" in a:
        f = a["flops"]
        parts = ", ".join(f"{k[4:]} {v / 1e9:.1f}" for k, v in f.items() if k.startswith("fwd:"))
        lines.append(f"FLOPs of (a), GFLOP: forward + backward {f['total'] / 1e9:.1f}; forward "
                     f"{f.get('forward', 0) / 1e9:.1f} ({parts}).")
        lines.append("")
    if "matmul_gflops_shapes" in a:
        shapes = "; ".join(f"{k}: {v:.0f}" for k, v in a["matmul_gflops_shapes"].items())
        lines.append(f"Matmul rate, GFLOP/s: 2048^3 {a['matmul_gflops']:.0f} (best of before the steps, "
                     f"{a['matmul_gflops_before']:.0f}, and after, {a['matmul_gflops_after']:.0f}); at the encoder's "
                     f"own shapes: {shapes}.")
        lines.append("")
    if "torch_profile" in a:
        tp = a["torch_profile"]
        step, enc = tp["step"], tp["encoder"]
        lines.append("Self time by kind of op (`torch.profiler`, `record_shapes`; the fastest of "
                     f"{a['profile_steps']} profiled steps of (a), and of the image encoder alone, forward + backward with a random gradient at the embedding; a matmul counts as "
                     "LoRA when one of its matrix dims equals the rank, 4). Under the profiler the step took "
                     f"{step['wall_s']:.2f} s (self times sum to {step['self_s']:.2f} s), the encoder alone "
                     f"{enc['wall_s']:.2f} s:")
        lines.append("")
        lines.append("| kind | step: s | step: share | encoder alone: s | rest of step (decoder, loss, prompts, optimizer): s |")
        lines.append("|---|---:|---:|---:|---:|")
        names = sorted(set(step["categories"]) | set(enc["categories"]), key=lambda n: -step["categories"].get(n, 0))
        for name in names:
            s_step, s_enc = step["categories"].get(name, 0.0), enc["categories"].get(name, 0.0)
            lines.append(f"| {name} | {s_step:.3f} | {s_step / step['self_s']:.1%} | {s_enc:.3f} | "
                         f"{s_step - s_enc:.3f} |")
        lines.append("")
        lines.append("Top ops of one step of (a) by self time:")
        lines.append("")
        lines.append("| op | calls | self ms | share |")
        lines.append("|---|---:|---:|---:|")
        for r in step["ops"]:
            lines.append(f"| `{r['op']}` | {r['calls']} | {r['self_ms']:.1f} | {r['share']:.1%} |")
        lines.append("")
    return lines


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


def markdown_section(results: dict[str, dict[str, Any]], args: argparse.Namespace, command: str,
                     machine: str, shared: str) -> str:
    a = results.get("lora", {})
    lines = [
        "",
        "## Training step",
        "",
        f"SAM `{args.model_type}` (random weights) at {args.image_size[0]}x{args.image_size[1]}, "
        f"K = {args.masks} target masks per image, {args.iterations} interactive iterations, batch of 1 synthetic "
        f"SA-1B image (`make_synthetic` + `open_dataset`), on `{args.device}`. A step = "
        "`LoRASAM.interactive_step` (encoder once per image, all targets decoded together per iteration) + "
        "mean loss + backward + `AdamW.step` over the trainable parameters; each mode runs in its own subprocess.",
        "",
        f"Machine: {machine}.",
        "",
        "Command:",
        "",
        "```",
        command,
        "```",
        "",
        "Units: **targets/s** = target masks trained per second (K per image and step; each is one prompt "
        "sequence: a point with up to 3 clicks, or one noisy box); **decodes/s** = (target, iteration) pairs "
        "decoded per second (a point target counts its iterations, a box 1). Step time: best (and median) of "
        f"{args.steps} timed steps after {args.warmup} warm-up step(s); (c) calls `interactive_step` once per target "
        f"(encoder K times, one backward per target), timed over {args.naive_targets} targets for {args.naive_steps} "
        "steps and scaled to K as `(t - t_opt) * K / n + t_opt`. Peak memory: the mode's process peak "
        "(VmHWM, reset via /proc/self/clear_refs after the model, optimiser and batch are built) minus its RSS "
        "then; it includes gradients and AdamW state. FLOPs: `torch.utils.flop_counter.FlopCounterMode` over one "
        "step's forward + backward (matmul / conv / attention only); FLOP floor = FLOPs / the machine's "
        f"float32 matmul rate, {machine_rate(results):.0f} GFLOP/s: a 2048^3 matmul, same {args.threads} threads, "
        "best of repeats before and after the steps in each mode's process ("
        + ", ".join(f"{m} {r['matmul_gflops']:.0f}" for m, r in results.items()) + " GFLOP/s).",
        "",
        table(results),
        "",
        "Targets:",
        "",
        *targets_report(results),
        "",
        f"{shared}. {args.note}".rstrip(),
        "",
    ]
    if a:
        lines += ["### Profile of (a)", "", *profile_report(a)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
