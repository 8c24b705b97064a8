"""Where a step's time and FLOPs go: a helper module of ``train_step.py`` and ``static_k.py``, not a script.

``timed_parts`` / ``profile_parts``: wall time of each part of a step, by wrapping the functions
``interactive_step`` calls; ``torch_profile``: ``torch.profiler`` self time by kind of op;
``count_flops``: the step's FLOPs (``FlopCounterMode``).
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Any

from bench_machine import await_quiet, sync
from bench_step import Stepper

PROFILED = ("encode", "decode", "upscale", "point_sample", "box_sample", "sample_points",
            "sample_error_points", "noisy_boxes", "masks_to_boxes", "mask_iou")


@contextlib.contextmanager
def timed_parts(stepper: Stepper):  # noqa: ANN201
    """Wall time of each part of ``interactive_step`` (forward), of backward split at the image
    embedding (decoder side vs encoder side, by a gradient hook on the embedding), and of the
    optimiser.  Patches the names ``lora_sam.training.recipe`` and ``lora_sam.models.sam_v1.model`` (``SamV1``) look up,
    for the duration only."""
    import lora_sam.models.sam_v1.model as lmodel
    import lora_sam.training.recipe as lrecipe

    times: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    device = stepper.device
    originals = {(lib, name): getattr(lib, name) for lib in (lrecipe, lmodel) for name in PROFILED
                 if hasattr(lib, name) and (lib is lrecipe or name in ("encode", "decode", "upscale"))}
    hook_times: list[float] = []

    def wrap(name: str, fn: Any) -> Any:
        def inner(*args: Any, **kwargs: Any) -> Any:
            sync(device)
            t = time.perf_counter()
            result = fn(*args, **kwargs)
            sync(device)
            times[name] += time.perf_counter() - t
            calls[name] += 1
            if name == "encode" and result.requires_grad:
                def hook(grad: Any) -> None:
                    sync(device)
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
        sync(device)
        t = time.perf_counter()
        loss.backward()
        sync(device)
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
            sync(stepper.device)
            t = time.perf_counter()
            stepper()
            sync(stepper.device)
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

    from lora_sam.models.sam_v1.model import encode

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
            sync(stepper.device)
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
            sync(stepper.device)
            wall = time.perf_counter() - t
        stepper.optimizer.zero_grad(set_to_none=True)
        if encoder is None or wall < encoder["wall_s"]:
            encoder = summarise(prof, wall)
    return {"step": step, "encoder": encoder}


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

