"""Per-click latency of ``lora-sam app``'s session logic, at the training resolution and at 1024 px.

    python benchmarks/app_latency.py                       # built-in tiny base at 160x256, 20 clicks
    python benchmarks/app_latency.py --run runs/demo       # the base, LoRA and full model of a run folder

A click = ``Session.click`` (every model decodes the prompts, the kept logits fed back after the first)
plus drawing the page's pictures (the image with its prompts, one picture per model), everything the
page does but Gradio's transport. The image embeddings are cached when the image loads, so a click
runs only the prompt encoder and the mask decoder; the load (one encoder pass per model) is timed
apart. Without ``--run`` the LoRA adapter and the full model are made here from the base (random LoRA
B, a perturbed decoder): latency does not depend on what the weights learned. Per model: the time of
its own answer and picture; "all models": the whole click.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lora_sam.app.images import from_array
from lora_sam.app.models import ModelBank
from lora_sam.app.overlay import model_view, prompt_view
from lora_sam.app.session import Session
from lora_sam.lora import inject_lora, lora_layers
from lora_sam.lora.adapter import save_adapter
from lora_sam.models.sam_v1.model import build_sam, resolve_checkpoint


def _made_models(folder: Path, model_type: str, checkpoint: str | None, size: tuple[int, int]) -> tuple[str, str]:
    sam = build_sam(model_type, checkpoint, size)
    inject_lora(sam, 4, 4.0)
    for layer in lora_layers(sam).values():
        torch.nn.init.normal_(layer.lora_B, std=0.02)
    save_adapter(sam, folder / "adapter.safetensors", model_type=model_type, image_size=size)
    full = build_sam(model_type, checkpoint, size)
    with torch.no_grad():
        full.mask_decoder.iou_prediction_head.layers[-1].bias.add_(0.1)
    torch.save(full.state_dict(), folder / "model.pth")
    return str(folder / "adapter.safetensors"), str(folder / "model.pth")


def _image(seed: int) -> np.ndarray:
    """A 1000x1500 photo-like test image: smooth colours with a few discs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:1000, :1500]
    image = np.stack([xx * 255 // 1500, yy * 255 // 1000, (xx + yy) * 255 // 2500], -1).astype(np.uint8)
    for _ in range(8):
        cx, cy, r = rng.integers(100, 1400), rng.integers(100, 900), rng.integers(40, 200)
        image[(xx - cx) ** 2 + (yy - cy) ** 2 < r**2] = rng.integers(0, 256, 3)
    return image


def _clicks(session: Session, clicks: int, seed: int) -> tuple[list[float], dict[str, list[float]]]:
    """Time ``clicks`` clicks: the whole click, and each model's answer plus picture."""
    rng = np.random.default_rng(seed)
    dh, dw = session.image.display_size
    answer, per_model, totals = session._answer, {name: [] for name in session.bank.names}, []
    for index in range(clicks):
        spent = {name: 0.0 for name in per_model}

        def timed(name, events, segmenter, _spent=spent):
            start = time.perf_counter()
            out = answer(name, events, segmenter)
            _spent[name] += time.perf_counter() - start
            return out

        session._answer = timed  # type: ignore[method-assign]
        x, y = int(rng.integers(0, dw)), int(rng.integers(0, dh))
        start = time.perf_counter()
        session.click(x, y, "positive" if index % 3 != 2 else "negative")
        outputs = session.outputs()
        prompt_view(session.image, session.events, session.pending)
        for name, output in outputs.items():
            drawn = time.perf_counter()
            model_view(session.image, output, session.events)
            spent[name] += time.perf_counter() - drawn
        totals.append(time.perf_counter() - start)
        for name in per_model:
            per_model[name].append(spent[name])
    session._answer = answer  # type: ignore[method-assign]
    return totals, per_model


def _p90(values: list[float]) -> float:
    return float(np.percentile(values, 90))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-type", default="tiny")
    parser.add_argument("--checkpoint", default=None, help="base checkpoint (default: the built-in tiny base)")
    parser.add_argument("--image-size", type=int, nargs=2, default=(160, 256), metavar=("H", "W"))
    parser.add_argument("--run", type=Path, default=None, help="a compare / demo folder (lora/, full/)")
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    size = tuple(args.image_size)
    with tempfile.TemporaryDirectory() as tmp:
        if args.run is not None:
            adapter, full = str(args.run / "lora" / "adapter.safetensors"), str(args.run / "full" / "model.pth")
        else:
            adapter, full = _made_models(Path(tmp), args.model_type, args.checkpoint, size)
        bank = ModelBank(model_type=args.model_type, checkpoint=args.checkpoint, image_size=size,
                         adapters=[adapter], fulls=[full], device="cpu")
        print(f"{args.model_type} from {resolve_checkpoint(args.model_type, args.checkpoint)} at {size[0]}x{size[1]}, "
              f"torch threads {torch.get_num_threads()}, {args.clicks} clicks per resolution on a 1000x1500 image")
        rows = []
        for resolution in ("low", "1024"):
            for name in bank.names:  # build the 1024 px models before timing the image load
                bank.model(name, resolution)
            session = Session(bank)
            session.set_resolution(resolution)
            start = time.perf_counter()
            session.load(from_array(_image(0), size, "bench", frame=bank.frame))
            encode = time.perf_counter() - start
            totals, per_model = _clicks(session, args.clicks, seed=1)
            label = f"{size[0]}x{size[1]}" if resolution == "low" else "1024 px"
            for name, values in per_model.items():
                rows.append((label, name, statistics.median(values), _p90(values), None))
            rows.append((label, "all models", statistics.median(totals), _p90(totals), encode))
    print("\n| resolution | model | median ms | p90 ms | image load (encode all) ms |\n|---|---|---:|---:|---:|")
    for label, name, median, p90, encode in rows:
        load = "" if encode is None else f"{encode * 1e3:.0f}"
        print(f"| {label} | {name} | {median * 1e3:.1f} | {p90 * 1e3:.1f} | {load} |")


if __name__ == "__main__":
    main()
