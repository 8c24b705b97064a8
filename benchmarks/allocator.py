"""The memory allocator setting of the ``lora-sam`` commands (``lora_sam.runs.allocator.tune_allocator``) against the C
library's defaults (``LORA_SAM_MALLOC=system``), on the real demo's work: LiteMedSAM's LoRA training steps and its
evaluation of the held-out nuclei tile.

Each measurement runs in a fresh process (the setting is process-wide), tuned and default in turn, ``--rounds``
times; each prints wall seconds, minor page faults, system CPU seconds and peak RSS, and the ratios default / tuned
pair by pair. Needs the ``[medsam,nuclei]`` extras and the nuclei tiles (``lora-sam nuclei DATA``).

    python benchmarks/allocator.py --data runs/demo/data/dsb2018 --rounds 2          # about 6 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

_CHILD = r"""
import json, resource, sys, time
from lora_sam.runs.allocator import tune_allocator

tune_allocator()
import torch
from lora_sam.data.loaders import get_loaders
from lora_sam.evaluation.options import EvalModels, EvalOptions
from lora_sam.evaluation.run import evaluate_models
from lora_sam.training.module import LoRASAM, prompt_generator
from lora_sam.training.recipe import RecipeOptions

data, work, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
start_usage = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.perf_counter()
if work == "train":
    torch.manual_seed(0)
    model = LoRASAM(4, 4.0, model_type="lite_medsam", recipe=RecipeOptions(masks_per_image=8, iterations=3))
    loader, _ = get_loaders(data, image_size=(256, 256), batch_size=1, masks_per_image=8)
    batches = [b for _, b in zip(range(3), loader)]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for i in range(steps):
        t = time.perf_counter()
        model.interactive_step(batches[i % 3], prompt_generator(0, i)).mean("total").backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - t)
    seconds = sum(times[1:]) / (len(times) - 1)  # a step, the first left out
else:
    evaluate_models(data, None, EvalModels("lite_medsam", None, (256, 256)), EvalOptions(max_clicks=5),
                    progress=False)
    seconds = time.perf_counter() - t0
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"seconds": seconds, "minor_faults": usage.ru_minflt - start_usage.ru_minflt,
                  "system_s": usage.ru_stime - start_usage.ru_stime, "peak_rss_gb": usage.ru_maxrss / 1e6}))
"""


def _measure(data: Path, work: str, steps: int, tuned: bool) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("LORA_SAM_MALLOC", "THP_MEM_ALLOC_ENABLE")}
    if not tuned:
        env["LORA_SAM_MALLOC"] = "system"
    out = subprocess.run([sys.executable, "-c", _CHILD, str(data), work, str(steps)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("runs/demo/data/dsb2018"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6, help="training steps per process (the first not timed)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results: dict[str, list[dict[str, dict[str, float]]]] = {"train": [], "eval": []}
    for work in results:
        for _ in range(args.rounds):
            pair = {"tuned": _measure(args.data, work, args.steps, True),
                    "system": _measure(args.data, work, args.steps, False)}
            results[work].append(pair)
            ratio = pair["system"]["seconds"] / pair["tuned"]["seconds"]
            print(f"{work}: tuned {pair['tuned']}\n{' ' * len(work)}  system {pair['system']}\n"
                  f"{' ' * len(work)}  system / tuned seconds: {ratio:.2f}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
