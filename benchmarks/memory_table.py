"""Peak memory and step time of a LoRA training step per model size, resolution and compute option.

Each cell is one ``benchmarks/train_step.py`` LoRA worker (its own subprocess: ``LoRASAM(4, 1)``, K = 16
targets of one synthetic image, ``--iterations`` rounds, forward + loss + backward + AdamW), run with
``--compute official`` (SAM's own attention), ``fused`` (the default: attention without N x N maps) and
``fused+ckpt`` (also activation checkpointing of the encoder blocks: ``LoRASAM(grad_checkpointing=True)``).
Peak memory is train_step's: the process's peak above its RSS once the model, optimiser and batch are built
(CPU: VmHWM; CUDA: max_memory_allocated), so it holds activations, gradients and AdamW state.

    python benchmarks/memory_table.py                                  # tiny and ViT-B, 160x256 and 1024x1024
    python benchmarks/memory_table.py --models vit_b --sizes 1024x1024 --json memory.json
    python benchmarks/memory_table.py --device cuda --models vit_b,vit_l,vit_h
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_step  # noqa: E402  (the benchmark this one runs, cell by cell)
from bench_report import fmt_bytes  # noqa: E402

OPTIONS = ("official", "fused", "fused+ckpt")


def cell(model_type: str, size: tuple[int, int], compute: str, common: list[str], data: str) -> dict[str, Any]:
    """One train_step LoRA worker at these settings (``common``: train_step options shared by every cell)."""
    args = train_step_args([*common, "--model-type", model_type, "--image-size", str(size[0]), str(size[1]),
                            "--compute", compute, "--modes", "lora", "--profile", "0"])
    result = train_step.run_mode("lora", args, data)
    return {"model_type": model_type, "size": list(size), "compute": compute, "step_s": result["measured_step_s"],
            "peak_bytes": result["peak_bytes"], "peak_abs_bytes": result["peak_abs_bytes"],
            "others_cpu_share": result["others_cpu_share"], "device": result["device"]}


def train_step_args(argv: list[str]) -> argparse.Namespace:
    """train_step.py's parsed options for ``argv`` (its parser, so defaults are its own)."""
    return train_step.build_parser().parse_args(argv)


def markdown(cells: list[dict[str, Any]]) -> str:
    rows = ["| model | size | compute | step (s) | peak memory above model | process peak | vs official |",
            "|---|---|---|---:|---:|---:|---:|"]
    official = {(c["model_type"], tuple(c["size"])): c["peak_bytes"] for c in cells if c["compute"] == "official"}
    for c in cells:
        base = official.get((c["model_type"], tuple(c["size"])))
        ratio = f"{c['peak_bytes'] / base:.2f}x" if base else "n/a"
        rows.append(f"| {c['model_type']} | {c['size'][0]}x{c['size'][1]} | {c['compute']} | {c['step_s']:.2f} | "
                    f"{fmt_bytes(c['peak_bytes'])} | {fmt_bytes(c['peak_abs_bytes'])} | {ratio} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,vit_b", help="comma-separated model types (default tiny,vit_b)")
    parser.add_argument("--sizes", default="160x256,1024x1024", help="comma-separated HxW (default 160x256,1024x1024)")
    parser.add_argument("--options", default=",".join(OPTIONS), help=f"comma-separated subset of {','.join(OPTIONS)}")
    parser.add_argument("--iterations", type=int, default=3, help="interactive iterations (default 3)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per cell (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", default=None, help="write the cells here")
    args = parser.parse_args(argv)
    common = ["--steps", str(args.steps), "--warmup", "1", "--device", args.device, "--threads", str(args.threads),
              "--iterations", str(args.iterations)]
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    cells = []
    with tempfile.TemporaryDirectory() as tmp:
        from lora_sam.data.synth import make_synthetic

        data = str(Path(tmp) / "sa1b")
        make_synthetic(data, 4, seed=0)
        for model_type in args.models.split(","):
            for size in sizes:
                for compute in args.options.split(","):
                    print(f"{model_type} {size[0]}x{size[1]} {compute} ...", file=sys.stderr, flush=True)
                    cells.append(cell(model_type, size, compute, common, data))
    print(markdown(cells))
    shared = max(c["others_cpu_share"] for c in cells)
    print(f"\nOther processes' share of the CPU while a cell ran: up to {shared:.0%}.")
    if args.json:
        Path(args.json).write_text(json.dumps(cells, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
