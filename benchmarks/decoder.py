"""SAM v1's mask decoder: the official computation against ``models.sam_v1.decoder``'s (``use_fast_decoder``).

The same model, weights and inputs, switched between the two in turn (``--rounds`` times, in one process; each
number is the median of its repeats), two threads. Three kernels of the decoder (SAM's 256-wide decoder on a 64x64
embedding: ViT-B, MobileSAM and LiteMedSAM share it; random weights):

- ``first_click``: K=28 prompts of one point, the three outputs, no gradients (the evaluation's first click, the
  automatic mask generator's batches);
- ``later_click``: the same with two points and the previous logits as the mask prompt, one output;
- ``train``: K=8 prompts with the mask prompt, the four outputs, forward and backward with LoRA on the decoder
  (one round of a training step);
- ``sam2_first_click``: SAM 2.1's decoder (Hiera-t at 1024 px, random weights) on 28 first clicks, with its
  two-way transformer by ``models.two_way`` or by Meta's code (with the ``[sam2]`` extra).

With ``--data`` (the nuclei tiles of ``lora-sam nuclei``, extras ``[medsam,nuclei]``), two end-to-end rows of the
real demo too: ``eval_row`` (LiteMedSAM evaluated on the held-out tile: 28 nuclei, 5 clicks and the box) and
``train_step`` (a LoRA step of the demo's recipe: 4 targets, 3 correction rounds).

    python benchmarks/decoder.py --data runs/demo/data/dsb2018 --rounds 3 --json benchmarks/results/decoder/decoder.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lora_sam.lora import inject_lora
from lora_sam.models.sam_v1.decoder import use_fast_decoder
from lora_sam.models.sam_v1.model import build_sam, decode
from lora_sam.runs.allocator import tune_allocator


def _median_seconds(work: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _kernels() -> tuple[torch.nn.Module, dict[str, Callable[[], object]]]:
    torch.manual_seed(0)
    sam = build_sam("vit_b", "random", (1024, 1024))
    inject_lora(sam, 4, 4.0, ("mask_decoder.transformer.*", "mask_decoder.output_upscaling.*"))
    g = torch.Generator().manual_seed(0)
    embedding = torch.randn(1, 256, 64, 64, generator=g)
    points = torch.rand(28, 2, 2, generator=g) * 1024
    labels = torch.ones(28, 2, dtype=torch.long)
    masks = torch.randn(28, 1, 256, 256, generator=g)

    @torch.no_grad()
    def first_click() -> object:
        return decode(sam, embedding, points[:, :1], labels[:, :1], multimask=True)

    @torch.no_grad()
    def later_click() -> object:
        return decode(sam, embedding, points, labels, mask_input=masks, multimask=False)

    def train() -> object:
        logits, iou = decode(sam, embedding, points[:8], labels[:8], mask_input=masks[:8], all_outputs=True)
        (logits.sigmoid().mean() + iou.mean()).backward()
        return None

    return sam, {"first_click": first_click, "later_click": later_click, "train": train}


def _sam2_kernel() -> tuple[torch.nn.Module, dict[str, Callable[[], object]], Callable[[bool], None]]:
    """SAM 2.1's decoder (``sam2.1_hiera_t`` at 1024 px: the same 256-wide two-way transformer on 64x64 tokens, its
    high-resolution skip features too), 28 first clicks; the switch is ``sam2_1.model.set_compute``'s."""
    from lora_sam.models import families
    from lora_sam.models.sam2_1.model import set_compute

    torch.manual_seed(0)
    model = families.build("sam2.1_hiera_t", "random", (1024, 1024))
    with torch.no_grad():
        features = model.encode(torch.rand(1, 3, 1024, 1024) * 255)
    g = torch.Generator().manual_seed(0)
    points = torch.rand(28, 1, 2, generator=g) * 1024

    @torch.no_grad()
    def sam2_first_click() -> object:
        return model.decode(features, points=points, labels=torch.ones(28, 1, dtype=torch.long), multimask=True)

    return model.module, {"sam2_first_click": sam2_first_click}, \
        lambda fast: set_compute(model.module, grad_checkpointing=False, fused_attention=fast)


def _demo_rows(data: Path) -> tuple[list[torch.nn.Module], dict[str, Callable[[], object]]]:
    from lora_sam.data.loaders import get_loaders
    from lora_sam.evaluation.options import EvalModels, EvalOptions
    from lora_sam.evaluation.protocol import evaluate_many
    from lora_sam.evaluation.run import build_segmenters, eval_samples
    from lora_sam.training.module import LoRASAM, prompt_generator
    from lora_sam.training.recipe import RecipeOptions

    models = EvalModels("lite_medsam", None, (256, 256))
    options = EvalOptions(max_clicks=5)
    samples, _, _ = eval_samples(str(data), models.image_size, options, frame=models.frame)
    samples = list(samples)
    segmenter = build_segmenters(models)["base"][0]
    torch.manual_seed(0)
    module = LoRASAM(4, 4.0, model_type="lite_medsam", recipe=RecipeOptions(masks_per_image=4, iterations=3))
    loader, _ = get_loaders(str(data), image_size=(256, 256), batch_size=1, masks_per_image=4)
    batch = next(iter(loader))

    def eval_row() -> object:
        return evaluate_many({"base": segmenter}, samples, max_clicks=5, seed=0, progress=False)

    def train_step() -> object:
        module.interactive_step(batch, prompt_generator(0, 0)).mean("total").backward()
        module.zero_grad(set_to_none=True)
        return None

    return [segmenter.module, module.sam], {"eval_row": eval_row, "train_step": train_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="the nuclei tiles (lora-sam nuclei DATA): the demo's rows too")
    parser.add_argument("--rounds", type=int, default=3, help="official / fast alternations")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each kernel per measurement (median)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    tune_allocator()  # as the lora-sam commands run
    torch.set_num_threads(2)
    sam, work = _kernels()
    models = [sam]
    switches = [lambda fast: [use_fast_decoder(m, fast) for m in models]]
    try:
        _, sam2_work, sam2_switch = _sam2_kernel()
        work.update(sam2_work)
        switches.append(sam2_switch)
    except ImportError:  # the [sam2] extra is not installed
        print("sam2 not installed: SAM 2.1's kernel left out")
    if args.data is not None:
        more, rows = _demo_rows(args.data)
        models += more
        work.update(rows)
    results: dict[str, dict[str, list[float]]] = {name: {"official": [], "fast": []} for name in work}
    for round_ in range(args.rounds):
        for mode in ("official", "fast"):
            for switch in switches:
                switch(mode == "fast")
            for name, fn in work.items():
                fn()  # warm-up
                results[name][mode].append(_median_seconds(fn, 1 if name == "eval_row" else args.repeats))
        print(f"round {round_ + 1}: " + ", ".join(
            f"{n} {r['official'][-1]:.3f}/{r['fast'][-1]:.3f} s" for n, r in results.items()), flush=True)
    summary = {name: {**r, "speedup": [o / f for o, f in zip(r["official"], r["fast"])]} for name, r in results.items()}
    for name, r in summary.items():
        print(f"{name:12s} official {statistics.median(r['official']):.3f} s, fast {statistics.median(r['fast']):.3f} s,"
              f" speed-up " + " / ".join(f"{s:.2f}x" for s in r["speedup"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"threads": 2, "cpu": _cpu(), "rounds": args.rounds, "results": summary},
                                        indent=1))


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
