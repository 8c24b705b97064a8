"""One pass over what needs a GPU to check, for a session that is lent one (it should finish in 8 minutes on one GPU).

Four parts, each in ``try``/``except`` (a failing part records its error and the next one runs), written to one
JSON file (``--out``, rewritten after every part) with the card, torch and CUDA versions and each part's seconds:

1. ``api``: the README's Python API on the device: ``LoRASAM(4, 1)`` (ViT-B, random weights), ``get_loaders`` over
   a few dozen synthetic images (``make_synthetic``, 160x256) and a ``Trainer(devices=1, precision="bf16-mixed")``
   for ``--api-steps`` steps; the training loss of every step, the means of the first and the last 20, and
   whether it went down (an error when it did not, outside ``--quick``).
2. ``train_step``: ``benchmarks/train_step.py --device DEV --steps 5 --json ...``: per mode targets/s, peak memory
   and the step's FLOP rate against the card's dense bf16 peak (``BF16_TFLOPS``; the benchmark runs float32, so
   the share is a floor).
3. ``vs_peft``: the equal-work comparison against Hugging Face + PEFT (``vs_peft.run(parts=("a",))``).
4. ``eval``: ``lora-sam eval`` with random ViT-B weights saved as an official checkpoint, on a few synthetic
   images: its wall time and the main metrics of its ``eval.json``.
5. ``static_k``: ``benchmarks/static_k.py --device DEV``: the LoRA step with the eager decoder side against the
   static-K one compiled by ``torch.compile`` (``compile_decoder``), its compile time, and whether the compiled
   loss and gradients match the eager ones: which should be the default on a GPU.

``--quick`` runs the same parts on the CPU in a reduced form (the ``tiny`` model, 5 API steps, a tiny
train-step, ``vs_peft --quick``, eval on 2 images, the static-K step not compiled): the test suite runs it so
the script keeps working.

Usage::

    python benchmarks/gpu_check.py --out gpu_check.json                # on the GPU machine
    python benchmarks/gpu_check.py --quick --device cpu --out /tmp/gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))
import vs_peft  # noqa: E402
from bench_machine import cpu_model  # noqa: E402

PARTS = ("api", "train_step", "vs_peft", "eval", "static_k")
BF16_TFLOPS = (  # dense bf16 tensor-core peak, TFLOP/s, from the vendor's data sheets; first match wins
    (r"H200 NVL", 835.0), (r"H200", 989.0), (r"H100 NVL", 835.0), (r"H100.*PCIe", 756.0), (r"H100", 989.0),
    (r"A100", 312.0), (r"RTX 4090", 165.2), (r"\bL4\b", 121.0))


@dataclass(frozen=True)
class Check:
    """The sizes of one pass; ``QUICK`` replaces them for the CPU test."""

    device: str = "cuda"
    quick: bool = False
    model_type: str = "vit_b"
    precision: str = "bf16-mixed"
    api_steps: int = 300
    api_images: int = 36
    bench_steps: int = 5
    eval_images: int = 8
    eval_clicks: int = 20
    eval_masks: int = 16
    timeout_s: float = 240.0


QUICK = {"quick": True, "model_type": "tiny", "api_steps": 5, "api_images": 6, "bench_steps": 1, "eval_images": 2,
         "eval_clicks": 3, "eval_masks": 4}


def bf16_peak_tflops(card: str | None) -> float | None:
    """The dense bf16 peak of a card named like ``torch.cuda.get_device_name``; None for other cards."""
    return next((tflops for pattern, tflops in BF16_TFLOPS if card and re.search(pattern, card)), None)


def run_command(command: list[str], timeout_s: float) -> tuple[float, str]:
    """Run ``command``; (wall seconds, stdout). A non-zero exit raises with the end of its output."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=BENCHMARKS.parent)
    if done.returncode != 0:
        output = (done.stdout + done.stderr)[-3000:]
        raise RuntimeError(f"{' '.join(command[:3])} ... exited {done.returncode}:\n{output}")
    return time.perf_counter() - start, done.stdout


def part_api(check: Check, record: dict[str, Any], tmp: Path) -> None:
    """The README's Python API: LoRASAM + get_loaders + Trainer.fit on synthetic data; the loss goes down."""
    import pytorch_lightning as pl

    import lora_sam
    from lora_sam.data.synth import make_synthetic

    class LossLog(pl.Callback):
        def __init__(self) -> None:
            self.losses: list[float] = []

        def on_train_batch_end(self, trainer: pl.Trainer, module: Any, outputs: Any, batch: Any, i: int) -> None:
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            if loss is not None:
                self.losses.append(float(loss))

    root = tmp / "api_data"
    make_synthetic(root, check.api_images, seed=0, image_size=(160, 256))
    model = lora_sam.LoRASAM(4, 1, model_type=check.model_type, checkpoint="random")
    train_loader, val_loader = lora_sam.get_loaders(str(root))
    log = LossLog()
    trainer = pl.Trainer(devices=1, accelerator="gpu" if check.device.startswith("cuda") else "cpu",
                         max_steps=check.api_steps, precision=check.precision, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, callbacks=[log],
                         default_root_dir=str(tmp / "api_run"))
    start = time.perf_counter()
    trainer.fit(model, train_loader, val_loader)
    n = max(1, min(20, len(log.losses) // 2))
    first, last = sum(log.losses[:n]) / n, sum(log.losses[-n:]) / n
    record.update(fit_seconds=time.perf_counter() - start, steps=trainer.global_step, losses=log.losses,
                  loss_first=first, loss_last=last, loss_window=n, loss_decreased=last < first,
                  adapter_written=(tmp / "api_run" / "adapter.safetensors").is_file(),
                  val_loss=float(trainer.callback_metrics["val_loss"]) if "val_loss" in trainer.callback_metrics
                  else None)
    if not check.quick and not last < first:
        raise AssertionError(f"the training loss did not go down: mean of the first {n} steps {first:.4f}, "
                             f"of the last {n} {last:.4f}")


def quick_step_arguments(tmp: Path) -> list[str]:
    """The reduced step of ``--quick`` for ``train_step.py`` and ``static_k.py``: the tiny model at 64x96, K = 4, on
    two small synthetic images of its own (the default ones are SA-1B sized)."""
    from lora_sam.data.synth import make_synthetic

    make_synthetic(tmp / "data", 2, seed=0, image_size=(128, 192))
    return ["--model-type", "tiny", "--image-size", "64", "96", "--masks", "4", "--data", str(tmp / "data")]


def part_train_step(check: Check, record: dict[str, Any], tmp: Path) -> None:
    """``benchmarks/train_step.py`` on the device: targets/s, peak memory, FLOP rate vs the card's bf16 peak."""
    out = tmp / "train_step.json"
    command = [sys.executable, str(BENCHMARKS / "train_step.py"), "--device", check.device, "--steps",
               str(check.bench_steps), "--json", str(out)]
    if check.quick:
        command += quick_step_arguments(tmp) + ["--modes", "lora", "--profile", "0"]
    record["command"] = " ".join(command[1:])
    record["wall_seconds"], _ = run_command(command, check.timeout_s)
    card = record["card"] = _card(check)
    peak = record["bf16_peak_tflops"] = bf16_peak_tflops(card)
    modes = {}
    for mode, r in json.loads(out.read_text()).items():
        flops = r.get("flops", {}).get("total")
        tflops = flops / r["step_s"] / 1e12 if flops else None
        modes[mode] = {"targets_per_s": r["targets_per_s"], "decodes_per_s": r["decodes_per_s"],
                       "step_s": r["step_s"], "peak_bytes": r["peak_bytes"], "peak_abs_bytes": r["peak_abs_bytes"],
                       "flops_per_step": flops, "achieved_tflops": tflops,
                       "percent_of_bf16_peak": 100 * tflops / peak if tflops and peak else None}
    record["modes"] = modes


def part_vs_peft(check: Check, record: dict[str, Any], tmp: Path) -> None:
    """The equal-work comparison (a) against Hugging Face ``SamModel`` + PEFT, on the device."""
    try:
        import peft  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as error:
        raise RuntimeError(f"{error}: pip install transformers peft") from error
    variants = ("official", "fused+ckpt") if check.quick else vs_peft.VARIANTS  # quick: both switches, 2 runs
    report = vs_peft.run(parts=("a",), steps=1 if check.quick else max(2, check.bench_steps), warmup=1,
                         device=check.device, quick=check.quick, ours_variants=variants, timeout_s=check.timeout_s)
    record.update(report)
    failed = [name for name, r in report["results"].items() if "error" in r]
    if failed:
        raise RuntimeError(f"vs_peft measurements failed: {', '.join(failed)} (see results)")


def part_eval(check: Check, record: dict[str, Any], tmp: Path) -> None:
    """``lora-sam eval`` with random weights saved as an official checkpoint, on a few synthetic images."""
    import torch

    from lora_sam.data.synth import make_synthetic
    from lora_sam.models.sam_v1.model import build_sam

    checkpoint, data, out = tmp / f"sam_{check.model_type}_random.pth", tmp / "eval_data", tmp / "eval"
    torch.manual_seed(0)
    torch.save(build_sam(check.model_type, "random", (1024, 1024)).state_dict(), checkpoint)
    make_synthetic(data, check.eval_images, seed=1, image_size=(320, 512))
    script = Path(sys.executable).parent / "lora-sam"
    cli = "import lora_sam.cli as c; raise SystemExit(c.main())"
    entry = [str(script)] if script.is_file() else [sys.executable, "-c", cli]
    command = entry + ["eval", "--data", str(data), "--model-type", check.model_type, "--checkpoint", str(checkpoint),
                       "--device", check.device, "--out", str(out), "--split", "all", "--max-images",
                       str(check.eval_images), "--max-clicks", str(check.eval_clicks), "--masks-per-image",
                       str(check.eval_masks), "--quiet"]
    record["command"] = " ".join(["lora-sam", *command[len(entry):]])
    record["wall_seconds"], _ = run_command(command, check.timeout_s)
    base = json.loads((out / "eval.json").read_text())["models"]["base"]
    record.update(metrics=base["metrics"], prompt_count=base["prompt_count"], images=base["images"],
                  eval_seconds=base["seconds"])


def _cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _card(check: Check) -> str | None:
    import torch

    cuda = check.device.startswith("cuda") and torch.cuda.is_available()
    return torch.cuda.get_device_name(check.device) if cuda else None


def environment(check: Check) -> dict[str, Any]:
    import pytorch_lightning
    import torch

    return {"card": _card(check), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "lightning": pytorch_lightning.__version__,
            "python": platform.python_version(), "cpu": cpu_model(), "cores": os.cpu_count()}


def part_static_k(check: Check, record: dict[str, Any], tmp: Path) -> None:
    """``benchmarks/static_k.py`` on the device: eager against the static-K compiled decoder side."""
    out = tmp / "static_k.json"
    command = [sys.executable, str(BENCHMARKS / "static_k.py"), "--device", check.device, "--out", str(out),
               "--rounds", str(check.bench_steps)]
    if check.quick:  # not compiled: Inductor takes minutes on 2 cores (tests/test_decoder_side.py traces the graphs)
        command += quick_step_arguments(tmp) + ["--backend", "none", "--max-warmup-steps", "3"]
    record["command"] = " ".join(command[1:])
    record["wall_seconds"], _ = run_command(command, check.timeout_s)
    report = json.loads(out.read_text())
    record.update({k: report[k] for k in ("compile_warmup_s", "graphs", "graph_breaks", "grad_relative_difference",
                                          "compiled_speedup_best", "compiled_speedup_median", "floor_s")})
    record.update({name: report[name] for name in ("eager", "static_eager", "static_compiled")})
    if not report["grad_relative_difference"] < 1e-3:
        raise RuntimeError(f"the compiled step's gradients differ from the eager ones by "
                           f"{report['grad_relative_difference']:.2e} (relative)")


RUNNERS: dict[str, Callable[[Check, dict[str, Any], Path], None]] = {
    "api": part_api, "train_step": part_train_step, "vs_peft": part_vs_peft, "eval": part_eval,
    "static_k": part_static_k}


def run_check(check: Check, parts: tuple[str, ...], out: Path) -> dict[str, Any]:
    """Every part of ``parts`` in turn; ``out`` rewritten after each, so an interrupted pass keeps what it did."""
    report: dict[str, Any] = {"check": asdict(check), "environment": environment(check), "parts": {}}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in parts:
            print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
            record: dict[str, Any] = {}
            t, cpu = time.perf_counter(), _cpu_seconds()
            try:
                (Path(tmp) / name).mkdir()
                RUNNERS[name](check, record, Path(tmp) / name)
            except Exception as error:  # recorded; the next part runs
                record.update(error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc()[-4000:])
            record.update(ok="error" not in record, seconds=time.perf_counter() - t, cpu_seconds=_cpu_seconds() - cpu)
            report["parts"][name] = record
            report["total_seconds"] = time.perf_counter() - start
            out.write_text(json.dumps(report, indent=1))
            status = "ok" if record["ok"] else f"FAILED: {record['error'][:300]}"
            print(f"gpu_check: {name} {status} ({record['seconds']:.0f} s)", file=sys.stderr, flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check.json", help="the JSON report (default gpu_check.json)")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:i or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny model, reduced sizes (the CPU test)")
    parser.add_argument("--api-steps", type=int, default=None, help="steps of the API run (default 300; quick 5)")
    parser.add_argument("--precision", default="bf16-mixed", help="the API run's Trainer precision")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    args = parser.parse_args(argv)
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    if set(parts) - set(PARTS):
        parser.error(f"--parts takes {', '.join(PARTS)}")
    check = Check(device=args.device, precision=args.precision, **(QUICK if args.quick else {}))
    if args.api_steps is not None:
        check = replace(check, api_steps=args.api_steps)
    warnings.filterwarnings("ignore", message=".*RANDOM weights.*")
    report = run_check(check, parts, Path(args.out))
    for name, record in report["parts"].items():
        print(f"{name}: {'ok' if record['ok'] else 'FAILED'} in {record['seconds']:.1f} s")
    print(f"wrote {args.out} ({report['total_seconds']:.0f} s)")
    return 0 if all(r["ok"] for r in report["parts"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
