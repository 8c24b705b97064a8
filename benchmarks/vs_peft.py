"""Our training step against Hugging Face ``transformers.SamModel`` + ``peft`` LoRA, each measurement in its own
subprocess (so its peak memory is its own).

* **(a) equal work.** SAM ViT-B (random weights) at SAM's 1024x1024 frame, LoRA rank 4 (alpha 4) on the image
  encoder's ``qkv`` layers only, 16 box prompts of one image, one iteration, the single-mask output; a step is
  forward, loss (focal x 20 + dice + IoU-head MSE), backward and ``AdamW.step``. *Ours*: ``LoRASAM(4, 4.0,
  layers="qkv", iterations=1, point_prob=0.0, box_output="single", ...)`` in a Lightning ``Trainer`` over one
  synthetic image (``make_synthetic`` + ``get_loaders``), variants ``official`` (SAM's attention), ``fused``
  (``lora_sam.models.sam_v1.model.use_fused_attention``) and ``fused+ckpt`` (and ``grad_checkpointing=True``); a variant whose
  option the library lacks is skipped with a note. *HF*: ``get_peft_model(SamModel(SamConfig()),
  LoraConfig(r=4, lora_alpha=4, target_modules=["qkv"]))`` on ``pixel_values`` (1, 3, 1024, 1024) and
  ``input_boxes`` (1, 16, 4), ``multimask_output=False``; our loss (``lora_sam.training.losses.sam_loss``) against 16 fixed
  box masks at HF's 256x256 low-resolution output (``--hf-loss full``: upscaled to 1024 first, as ours); AdamW.
* **(b) the users' route.** Ours with ``LoRASAM``'s defaults (ViT-B at 160x256, K = 16 targets of one image,
  3 interactive iterations, points or boxes) through the ``Trainer``, against the HF + PEFT step of (a) (the
  same measurement when both parts run): 16 prompts per step on both sides.

Reported: mean step seconds after the warm-up, prompts/s, peak memory above the baseline taken once the model,
the optimiser and the batch are in place (CPU: VmHWM reset via /proc/self/clear_refs minus VmRSS then; CUDA:
``max_memory_allocated`` minus ``memory_allocated`` then) and the absolute peak; the speed ratio (HF step time / ours,
per prompt) and the memory ratio (our peak / HF's).

Usage::

    python benchmarks/vs_peft.py --device cuda --steps 5 --json vs_peft.json --markdown docs/benchmarks/vs-peft.md
    python benchmarks/vs_peft.py --quick                           # tiny models (tests); default: CPU, a and b
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_machine import cpu_model, proc_status, reset_peak_rss, sync  # noqa: E402

PARTS = ("a", "b")
VARIANTS = ("official", "fused", "fused+ckpt")
NEEDS = {"official": (), "fused": ("fused",), "fused+ckpt": ("fused", "ckpt")}  # the library options they need
RATIO_KEY = {"b/ours": "b", **{f"a/ours/{v}": f"a/{v}" for v in VARIANTS}}


@dataclass(frozen=True)
class Setup:
    """What every measurement of a run shares (``quick``: ``QUICK``'s tiny models, 256 px frame, 4 prompts)."""

    steps: int = 2
    warmup: int = 1
    device: str = "cpu"
    threads: int | None = None
    quick: bool = False
    hf_loss: str = "low"
    model_type: str = "vit_b"
    side: int = 1024
    prompts: int = 16


QUICK = {"quick": True, "model_type": "tiny", "side": 256, "prompts": 4}
TINY_HF = {  # HF's SamConfig shaped like our ``tiny`` (lora_sam.models.sam_v1.sizes), at 256 px
    "vision_config": dict(hidden_size=160, num_hidden_layers=4, num_attention_heads=5, global_attn_indexes=[1, 3],
                          window_size=7, image_size=256, output_channels=64, num_pos_feats=32),
    "prompt_encoder_config": dict(hidden_size=64, image_size=256),
    "mask_decoder_config": dict(hidden_size=64, mlp_dim=256, num_attention_heads=4, iou_head_hidden_dim=64)}


def memory_baseline(device: Any) -> tuple[int, bool]:
    """Bytes in use now, with the peak counter reset to them; False where the CPU peak cannot be reset."""
    import torch

    gc.collect()
    if device.type != "cuda":
        reset = reset_peak_rss()
        return proc_status("VmRSS"), reset
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device), True


def memory_peak(device: Any) -> int:
    import torch

    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else proc_status("VmHWM")


def step_summary(times: list[float], prompts: list[int], warmup: int, base: int, reset: bool, peak: int) -> dict:
    timed, counts = times[warmup:], prompts[warmup:]
    step_s, per_step = sum(timed) / len(timed), sum(counts) / len(counts)
    return {"step_times_s": times, "step_s": step_s, "best_step_s": min(timed), "prompts_per_step": per_step,
            "prompts_per_s": per_step / step_s, "peak_bytes": peak - base if reset else peak, "peak_abs_bytes": peak,
            "base_bytes": base, "peak_reset": reset}


def ours_module(part: str, variant: str, setup: Setup) -> Any:
    """``LoRASAM`` of (a) (equal work, ``variant``'s attention) or of (b) (the defaults)."""
    import lora_sam.models.sam_v1.model
    from lora_sam.training.module import LoRASAM

    if part == "b":
        return LoRASAM(model_type=setup.model_type, checkpoint="random", masks_per_image=setup.prompts)
    given = dict(model_type=setup.model_type, checkpoint="random", image_size=(setup.side,) * 2, layers="qkv",
                 iterations=1, point_prob=0.0, box_output="single", masks_per_image=setup.prompts, lr=1e-4,
                 warmup_steps=0, focal_weight=20.0, dice_weight=1.0, iou_weight=1.0,
                 **({"grad_checkpointing": True} if variant == "fused+ckpt" else {}))
    try:  # the library's own switch, where it has one
        module = LoRASAM(4, 4.0, fused_attention=variant != "official", **given)
    except TypeError:
        module = LoRASAM(4, 4.0, **given)
    if hasattr(lora_sam.models.sam_v1.model, "use_fused_attention"):
        lora_sam.models.sam_v1.model.use_fused_attention(module.sam, variant != "official")
    return module


def measure_ours(part: str, variant: str, data: str, setup: Setup) -> dict[str, Any]:
    import pytorch_lightning as pl

    from lora_sam.data.loaders import get_loaders
    from lora_sam.models.checkpoints import DEFAULT_IMAGE_SIZE
    from lora_sam.runs.callbacks import StepTimer

    class Probe(pl.Callback):
        """Memory baseline before the first step (model, optimiser, batch in place), peak and prompts per step."""

        def __init__(self) -> None:
            self.base, self.reset, self.peak, self.classes, self.prompts = 0, False, 0, {}, []

        def on_train_batch_start(self, trainer: pl.Trainer, module: Any, batch: Any, batch_idx: int) -> None:
            if not self.prompts:
                self.base, self.reset = memory_baseline(module.device)
                block = module.sam.image_encoder.blocks[0]
                self.classes = {"block": type(block).__name__, "attention": type(block.attn).__name__}
            self.prompts.append(len(batch["targets"][0]))

        def on_train_batch_end(self, trainer: pl.Trainer, module: Any, outputs: Any, batch: Any, i: int) -> None:
            sync(module.device)
            self.peak = memory_peak(module.device)

    module = ours_module(part, variant, setup)
    size = DEFAULT_IMAGE_SIZE if part == "b" else (setup.side, setup.side)
    loader, _ = get_loaders(data, image_size=size, masks_per_image=setup.prompts, batch_size=1, val_fraction=0.0,
                            num_workers=0)
    probe, timer = Probe(), StepTimer()
    accelerator, devices = ("gpu", [int(setup.device[5:] or 0)]) if "cuda" in setup.device else ("cpu", 1)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = pl.Trainer(accelerator=accelerator, devices=devices, max_steps=setup.warmup + setup.steps,
                             logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                             callbacks=[probe, timer], default_root_dir=tmp)
        trainer.fit(module, loader)
    result = step_summary(timer.times, probe.prompts, setup.warmup, probe.base, probe.reset, probe.peak)
    result.update(side="ours", model_type=setup.model_type, image_size=list(size), encoder_classes=probe.classes,
                  trainable=sum(p.numel() for p in module.parameters() if p.requires_grad),
                  recipe={k: getattr(module.recipe, k) for k in ("iterations", "point_prob", "box_output")})
    return result


def box_prompts(count: int, side: int, size: int, generator: Any) -> tuple[Any, Any]:
    """Random XYXY boxes (1, count, 4) in a ``side`` frame, 10 % to 40 % of it a side, and their filled
    masks (count, 1, size, size) bool on a ``size`` grid over the frame."""
    import torch

    wh = (0.1 + 0.3 * torch.rand(count, 2, generator=generator)) * side
    xy = torch.rand(count, 2, generator=generator) * (side - wh)
    boxes = torch.cat([xy, xy + wh], dim=1)
    masks = torch.zeros(count, 1, size, size, dtype=torch.bool)
    for k, (x0, y0, x1, y1) in enumerate((boxes * size / side).round().long().tolist()):
        masks[k, 0, y0:y1, x0:x1] = True
    return boxes[None], masks


def measure_hf(setup: Setup) -> dict[str, Any]:
    import peft
    import torch
    import torch.nn.functional as F
    from transformers import SamConfig, SamModel

    from lora_sam.training.losses import sam_loss

    device = torch.device(setup.device)
    config = SamConfig(**TINY_HF) if setup.quick else SamConfig()  # SamConfig(): ViT-B at 1024 px
    model = peft.get_peft_model(SamModel(config), peft.LoraConfig(r=4, lora_alpha=4, target_modules=["qkv"]))
    model = model.to(device).train()
    side = int(config.vision_config.image_size)
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(1, 3, side, side, generator=generator).to(device)
    low = int(config.prompt_encoder_config.image_embedding_size) * 4  # HF's low-resolution masks
    loss_size = side if setup.hf_loss == "full" else low
    boxes, targets = (t.to(device) for t in box_prompts(setup.prompts, side, loss_size, generator))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        out = model(pixel_values=pixels, input_boxes=boxes, multimask_output=False)
        logits = out.pred_masks[0]  # (K, 1, low, low)
        if loss_size != logits.shape[-1]:
            logits = F.interpolate(logits, (loss_size, loss_size), mode="bilinear", align_corners=False)
        loss = sam_loss(logits, out.iou_scores[0], targets, focal_weight=20.0, dice_weight=1.0, iou_weight=1.0)
        loss["total"].backward()
        optimizer.step()

    result = timed_loop(step, device, setup)
    result.update(side="hf", image_size=[side, side], loss_size=loss_size, trainable=sum(p.numel() for p in params),
                  attn_implementation=str(config.vision_config._attn_implementation))
    return result


def timed_loop(step: Callable[[], None], device: Any, setup: Setup) -> dict[str, Any]:
    """``step`` run ``warmup + steps`` times after the memory baseline; each timed with the device synced."""
    base, reset = memory_baseline(device)
    times = []
    for _ in range(setup.warmup + setup.steps):
        sync(device)
        t = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t)
    return step_summary(times, [setup.prompts] * len(times), setup.warmup, base, reset, memory_peak(device))


def worker(name: str, data: str, setup: Setup) -> dict[str, Any]:
    """One measurement: ``a/ours/VARIANT``, ``b/ours`` or ``a/hf`` / ``b/hf``."""
    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(setup.threads or os.cpu_count() or 1)
    torch.manual_seed(0)
    part, side, *variant = name.split("/")
    result = measure_hf(setup) if side == "hf" else measure_ours(part, variant[0] if variant else "", data, setup)
    return {"name": name, "threads": torch.get_num_threads(), **result}


def missing_features() -> dict[str, str]:
    """What the installed library lacks of the (a) variants' options: ``fused`` and ``ckpt``, with why."""
    import lora_sam.models.sam_v1.model
    from lora_sam.training.module import LoRASAM

    missing = {} if hasattr(lora_sam.models.sam_v1.model, "use_fused_attention") else {"fused": "no use_fused_attention"}
    try:
        with warnings.catch_warnings(action="ignore"):
            LoRASAM(model_type="tiny", checkpoint="random", image_size=(64, 64), grad_checkpointing=True)
    except TypeError as error:
        missing["ckpt"] = f"LoRASAM does not take grad_checkpointing ({error})"
    return missing


def measurement_names(parts: Sequence[str], variants: Sequence[str], missing: dict[str, str],
                      notes: list[str]) -> list[str]:
    names = []
    for variant in variants if "a" in parts else ():
        lacking = [missing[n] for n in NEEDS[variant] if n in missing]
        names += [] if lacking else [f"a/ours/{variant}"]
        notes += [f"(a) ours/{variant} skipped: {'; '.join(lacking)}"] if lacking else []
    names += ["a/hf"] if "a" in parts else []
    return names + (["b/ours"] + ([] if "a" in parts else ["b/hf"]) if "b" in parts else [])


def spawn(name: str, data: str, setup: Setup, timeout_s: float | None) -> dict[str, Any]:
    """``worker(name)`` in a fresh Python process; a failure is returned as ``{"error": ...}``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        job = {"name": name, "data": data, "setup": asdict(setup), "out": str(out)}
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"name": name, "error": f"timed out after {timeout_s} s"}
        if done.returncode != 0 or not out.is_file():
            return {"name": name, "error": f"exit {done.returncode}: {done.stderr[-3000:]}"}
        return json.loads(out.read_text())


def ratio(ours: dict[str, Any], hf: dict[str, Any]) -> dict[str, float] | None:
    """speed = HF step time / our step time; per_prompt = our prompts/s / HF's; memory = our peak / HF's."""
    if "error" in ours or "error" in hf:
        return None
    return {"speed": hf["step_s"] / ours["step_s"], "speed_per_prompt": ours["prompts_per_s"] / hf["prompts_per_s"],
            "memory": ours["peak_bytes"] / hf["peak_bytes"],
            "memory_abs": ours["peak_abs_bytes"] / hf["peak_abs_bytes"]}


def machine(setup: Setup) -> dict[str, Any]:
    import peft
    import torch
    import transformers

    cuda = "cuda" in setup.device
    gpu = {"gpu": torch.cuda.get_device_name(setup.device), "cuda": torch.version.cuda} if cuda else {}
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": setup.threads or os.cpu_count(), **gpu,
            "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


def run(parts: Sequence[str] = PARTS, steps: int = 2, warmup: int = 1, device: str = "cpu", quick: bool = False,
        *, threads: int | None = None, ours_variants: Sequence[str] = VARIANTS, hf_loss: str = "low",
        timeout_s: float | None = None) -> dict[str, Any]:
    """Every measurement of ``parts``, each in its own subprocess; returns the report (``results``, ``ratios``,
    ``machine``, ``setup``, ``notes``)."""
    from lora_sam.data.synth import make_synthetic

    setup = Setup(steps=steps, warmup=warmup, device=device, threads=threads, hf_loss=hf_loss,
                  **(QUICK if quick else {}))
    missing, notes = missing_features(), []
    names = measurement_names(parts, ours_variants, missing, notes)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        frame, users = str(Path(tmp) / "frame"), str(Path(tmp) / "users")
        make_synthetic(frame, 1, seed=0, image_size=(setup.side, setup.side))
        make_synthetic(users, 1, seed=0)
        for name in names:
            print(f"vs_peft: running {name} ...", file=sys.stderr, flush=True)
            results[name] = spawn(name, users if name.startswith("b/") else frame, setup, timeout_s)
    hf = results.get("a/hf") or results.get("b/hf")
    ratios = {RATIO_KEY[n]: ratio(r, hf) for n, r in results.items() if n in RATIO_KEY}
    notes += [f"{n} failed: {(r['error'].strip().splitlines() or [''])[-1]}" for n, r in results.items()
              if "error" in r]
    return {"setup": asdict(setup), "machine": machine(setup), "results": results, "ratios": ratios, "notes": notes,
            "library_lacks": missing}


def table(report: dict[str, Any]) -> str:
    lines = ["| measurement | model | frame | prompts / step | step s (mean) | prompts / s | peak above base, GiB | "
             "peak abs, GiB | speed vs HF per prompt (HF time / ours) | memory vs HF (ours / HF) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in report["results"].items():
        label = f"({name[0]}) " + ("HF + PEFT" if name.endswith("hf") else f"ours, {name[7:] or 'defaults'}")
        if "error" in r:
            lines.append(f"| {label} | failed: {(r['error'].strip().splitlines() or [''])[-1][:80]} |||||||||")
            continue
        rr = report["ratios"].get(RATIO_KEY.get(name, ""))
        ratios = f"{rr['speed_per_prompt']:.2f}x | {rr['memory']:.2f}x" if rr else " | "
        model = r.get("model_type") or ("tiny HF" if report["setup"]["quick"] else "ViT-B (SamConfig())")
        lines.append(f"| {label} | {model} | {r['image_size'][0]}x{r['image_size'][1]} | {r['prompts_per_step']:g} "
                     f"| {r['step_s']:.3f} | {r['prompts_per_s']:.2f} | {r['peak_bytes'] / 2**30:.2f} | "
                     f"{r['peak_abs_bytes'] / 2**30:.2f} | {ratios} |")
    return "\n".join(lines)


def markdown_section(report: dict[str, Any], command: str) -> str:
    m, s = report["machine"], report["setup"]
    where = m.get("gpu") or f"{m['cpu']}, {m['cores']} cores, {m['threads']} threads"
    lines = ["", "## Against Hugging Face + PEFT", "", "(a) equal work: SAM at its square frame, LoRA rank 4 on the "
             "encoder's `qkv`, 16 boxes of one image, single-mask output; a step = forward + focal x 20 + dice + IoU "
             "MSE + backward + AdamW. (b) `LoRASAM` defaults at 160x256 (K = 16, 3 iterations) against HF + PEFT at "
             f"1024 px. Each measurement in its own process; mean of {s['steps']} timed steps after {s['warmup']} "
             f"warm-up; HF's loss on its {'upscaled' if s['hf_loss'] == 'full' else 'low-resolution'} masks. Speed "
             "ratio per prompt (HF time / ours); memory ratio = our peak above the baseline / HF's.", "",
             f"Machine: {where}; torch {m['torch']}, transformers {m['transformers']}, peft {m['peft']}.", "",
             "```", command, "```", "", table(report), ""]
    lines += [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per measurement (default 2)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up steps per measurement (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--quick", action="store_true", help="tiny models, 256 px, 4 prompts (tests)")
    parser.add_argument("--parts", default="a,b", help="comma list of a, b (default both)")
    parser.add_argument("--ours-variants", default=",".join(VARIANTS), help="(a): official, fused, fused+ckpt")
    parser.add_argument("--hf-loss", choices=("low", "full"), default="low",
                        help="HF's loss on its low-resolution masks (default) or upscaled to the frame")
    parser.add_argument("--json", help="write the report here")
    parser.add_argument("--markdown", help="append the '## Against Hugging Face + PEFT' section here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # JSON: name, data, setup, out
    args = parser.parse_args(argv)
    if args.worker:
        job = json.loads(args.worker)
        Path(job["out"]).write_text(json.dumps(worker(job["name"], job["data"], Setup(**job["setup"]))))
        return 0
    parts, variants = ([v.strip() for v in a.split(",") if v.strip()] for a in (args.parts, args.ours_variants))
    if set(parts) - set(PARTS) or set(variants) - set(VARIANTS):
        parser.error(f"--parts takes {', '.join(PARTS)}; --ours-variants takes {', '.join(VARIANTS)}")
    report = run(parts, args.steps, args.warmup, args.device, args.quick, threads=args.threads,
                 ours_variants=variants, hf_loss=args.hf_loss)
    print("\n".join([table(report), *(f"note: {note}" for note in report["notes"])]))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    if args.markdown:
        command = "python " + shlex.join(["benchmarks/vs_peft.py", *(sys.argv[1:] if argv is None else argv)])
        with Path(args.markdown).open("a") as f:
            f.write(("" if f.tell() else "# Benchmarks\n") + markdown_section(report, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
