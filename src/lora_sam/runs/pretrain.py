"""``lora-sam pretrain``: train a small SAM from scratch with the full interactive recipe, resumably.

    lora-sam synth runs/pretrain/data --images 1600 --long-side 768 --seed 100 --workers 2
    nohup lora-sam pretrain runs/pretrain --data runs/pretrain/data > runs/pretrain/log.txt &
    lora-sam pretrain runs/pretrain --data runs/pretrain/data       # again: resumes from last.pt

The model is the official ``Sam`` (``model_type``, ``tiny`` by default) from random weights, or
from an official checkpoint (``--init``: a longer training in two runs, the second with a fresh
optimiser, warm-up and cosine schedule).
Every step trains at one of ``sizes`` (drawn from (seed, step) with ``size_weights``): one
position table of SAM's 64x64 grid is kept and resized bicubically, with gradients, to each
size's patch grid, so the same weights serve 160x256 and SamPredictor's 1024x1024 frame.
The step is ``recipe.interactive_step`` (a point or a noisy box, then error-region clicks with
the previous logits fed back), AdamW with linear warm-up and cosine decay, gradient clipping.

Checkpoints: ``OUT/checkpoints/last.pt`` (model, optimiser, schedule, step, time so far) every
``save_every_s`` seconds and at the end; a run started again on the same OUT goes on from it
(with the same settings, except ``--steps``: a new total makes the cosine schedule end there).
At the end: ``OUT/base.pth`` in the official checkpoint format (``build_sam`` and
``sam_model_registry`` load it) and ``OUT/pretrain.json`` (settings, steps, seconds, sha256).
``OUT/metrics.csv`` has the training loss and first-prompt mIoU every ``log_every`` steps.
``--export`` writes ``base.pth`` from ``last.pt`` without training further (a run ended early).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from tqdm import tqdm

from lora_sam.data.samples import batch_to
from lora_sam.io import atomic_path
from lora_sam.model import (
    ORIGINAL_SIZE,
    PATCH_SIZE,
    SamV1,
    build_sam,
    check_image_size,
    resize_position_table,
)
from lora_sam.recipe import RecipeOptions, interactive_step, prompt_generator

__all__ = ["PretrainConfig", "ResolutionSwitch", "export_last", "pretrain", "add_arguments", "run"]


@dataclass(frozen=True)
class PretrainConfig:
    """What ``pretrain`` trains and how; saved in ``pretrain.json`` and in every checkpoint."""

    model_type: str = "tiny"
    steps: int = 2600
    sizes: tuple[tuple[int, int], ...] = ((160, 256), (256, 256), (320, 512))
    size_weights: tuple[float, ...] = (0.75, 0.1, 0.15)
    batch_size: int = 4
    masks_per_image: int = 12
    lr: float = 1e-3
    warmup_steps: int = 150
    final_lr_fraction: float = 0.05
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    iterations: int = 3
    point_prob: float = 0.5
    focal_weight: float = 0.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    seed: int = 0
    save_every_s: float = 300.0
    log_every: int = 25
    init: str | None = None  # an official checkpoint to start from instead of random weights

    def __post_init__(self) -> None:
        if len(self.sizes) != len(self.size_weights) or not self.sizes:
            raise ValueError(f"sizes and size_weights must have the same non-zero length, got {self.sizes} and "
                             f"{self.size_weights}")
        for size in self.sizes:
            check_image_size(size)
        if self.steps <= 0 or self.batch_size <= 0:
            raise ValueError(f"steps and batch_size must be positive, got {self.steps} and {self.batch_size}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PretrainConfig:
        names = {f.name for f in fields(cls)}
        clean = {k: v for k, v in values.items() if k in names}
        if "sizes" in clean:
            clean["sizes"] = tuple(tuple(int(s) for s in size) for size in clean["sizes"])
        if "size_weights" in clean:
            clean["size_weights"] = tuple(float(w) for w in clean["size_weights"])
        return cls(**clean)

    def recipe(self) -> RecipeOptions:
        """The recipe options this config names (the fields the two share); the rest at their defaults."""
        return RecipeOptions.from_mapping(asdict(self))


class _Resize(nn.Module):
    """A parametrization: the (1, 64, 64, C) table resized bicubically (with gradients) to ``grid``."""

    def __init__(self) -> None:
        super().__init__()
        self.grid = (ORIGINAL_SIZE // PATCH_SIZE,) * 2

    def forward(self, table: Tensor) -> Tensor:
        return resize_position_table(table, self.grid)


class ResolutionSwitch:
    """Lets one ``Sam`` built at 1024 px run at any size: ``set(size)`` before a forward.

    The encoder's position table stays at 64x64 (``official_state_dict`` returns it so);
    the prompt encoder's sizes follow ``size``. The attention's relative position tables are
    resized by the official code at run time already.
    """

    def __init__(self, sam: nn.Module) -> None:
        self.sam = sam
        self.resize = _Resize()
        parametrize.register_parametrization(sam.image_encoder, "pos_embed", self.resize, unsafe=True)

    def set(self, size: tuple[int, int]) -> None:
        grid = (size[0] // PATCH_SIZE, size[1] // PATCH_SIZE)
        self.resize.grid = grid
        prompt = self.sam.prompt_encoder
        prompt.input_image_size = tuple(size)
        prompt.image_embedding_size = grid
        prompt.mask_input_size = (4 * grid[0], 4 * grid[1])

    def official_state_dict(self) -> dict[str, Tensor]:
        """The weights in the official layout, the position table at 64x64."""
        key = "image_encoder.parametrizations.pos_embed.original"
        state = {}
        for name, value in self.sam.state_dict().items():
            state["image_encoder.pos_embed" if name == key else name] = value.detach().cpu().clone()
        return state


def _schedule(config: PretrainConfig) -> Any:
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
        return config.final_lr_fraction + (1 - config.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


class _Batches:
    """The training batch of a step at a size: images drawn from (seed, step), targets from the step.

    A batch depends only on the step, so a resumed run sees exactly what an uninterrupted one would.
    Shard roots are not supported (they cannot be indexed): prepare a folder or a cache.
    """

    def __init__(self, root: Path, config: PretrainConfig) -> None:
        from lora_sam.data.loaders import open_dataset

        self.config = config
        self.datasets = {size: open_dataset(root, image_size=size, masks_per_image=config.masks_per_image,
                                            seed=config.seed) for size in config.sizes}
        first = next(iter(self.datasets.values()))
        if not hasattr(first, "__len__") or len(first) == 0:
            raise ValueError(f"{root}: no training images (an SA-1B folder, a COCO json or a prepared cache is "
                             f"needed; make one with 'lora-sam synth {root} --images 1600')")

    def at(self, step: int, size: tuple[int, int]) -> dict[str, Any]:
        from lora_sam.data.samples import collate

        dataset = self.datasets[size]
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + step)
        count = min(self.config.batch_size, len(dataset))
        picks = torch.randperm(len(dataset), generator=generator)[:count].tolist()
        return collate([dataset[(i, step)] for i in picks])


def _size_index(config: PretrainConfig, step: int) -> int:
    generator = torch.Generator().manual_seed(config.seed * 1_000_033 + step)
    weights = torch.tensor(config.size_weights, dtype=torch.float64)
    return int(torch.multinomial(weights, 1, generator=generator))


def _load_last(path: Path, sam: nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: Any, config: PretrainConfig) -> tuple[int, float, list[list[int]]]:
    """Step, seconds so far and the schedule's history ([step, total steps from there] pairs).

    Only ``steps`` may differ from the saved settings: the cosine schedule then runs to the new
    total from the saved step on (a run extended, or ended sooner with its learning rate decayed)."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    saved = PretrainConfig.from_dict(state["config"])
    step = int(state["step"])
    differ = [f.name for f in fields(config) if getattr(saved, f.name) != getattr(config, f.name)]
    if set(differ) - {"steps"}:
        raise ValueError(f"{path} was saved with other settings ({', '.join(differ)}); use another OUT folder "
                         f"or the same settings to resume (only --steps may change)")
    if config.steps < step:
        raise ValueError(f"{path} is at step {step} already: --steps must be at least that, got {config.steps}")
    sam.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    schedule = state.get("schedule", [[0, saved.steps]])
    if config.steps != schedule[-1][1]:
        schedule = [*schedule, [step, config.steps]]
        print(f"lora-sam pretrain: the schedule now ends at step {config.steps} (was {saved.steps})", flush=True)
    return step, float(state["seconds"]), schedule


def _save_last(path: Path, sam: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
               config: PretrainConfig, step: int, seconds: float, schedule: list[list[int]]) -> None:
    with atomic_path(path) as tmp:
        torch.save({"model": sam.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "config": asdict(config), "step": step,
                    "seconds": seconds, "schedule": schedule}, tmp)


def _log_row(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# long: one training loop
def pretrain(out: str | Path, data: str | Path, config: PretrainConfig = PretrainConfig(), *,
             stop_after_s: float | None = None, progress: bool = True,
             device: str | torch.device | None = None) -> dict[str, Any]:
    """Train (or go on training) into ``out``; see the module docstring. Returns what ``pretrain.json`` holds.

    ``stop_after_s`` ends this call (with a checkpoint) after that many seconds, to go on later;
    ``device``: where the model and the batches go (default: cuda when available).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out, data = Path(out), Path(data)
    out.mkdir(parents=True, exist_ok=True)
    last = out / "checkpoints" / "last.pt"
    torch.manual_seed(config.seed)
    sam = build_sam(config.model_type, config.init or "random", (ORIGINAL_SIZE, ORIGINAL_SIZE)).train()  # or last.pt
    sam.to(device)
    switch = ResolutionSwitch(sam)
    optimizer = torch.optim.AdamW(sam.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config))
    step, seconds, schedule = (_load_last(last, sam, optimizer, scheduler, config) if last.is_file()
                               else (0, 0.0, [[0, config.steps]]))
    if step:
        print(f"lora-sam pretrain: resuming {last} at step {step} ({seconds / 60:.1f} min so far)", flush=True)
    batches = _Batches(data, config)
    options, model = config.recipe(), SamV1(sam)
    bar = tqdm(total=config.steps, initial=step, desc="pretrain", unit="step", disable=not progress,
               mininterval=5.0)
    started, saved_at = time.perf_counter(), time.perf_counter()
    sums: dict[str, float] = {}
    while step < config.steps:
        index = _size_index(config, step)
        switch.set(config.sizes[index])
        batch = batch_to(batches.at(step, config.sizes[index]), device)
        result = interactive_step(model, batch, prompt_generator(config.seed, step), options)
        if result.terms:
            loss = result.mean("total")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(sam.parameters(), config.grad_clip)
            optimizer.step()
            for name, value in (("loss", loss), ("miou_first", result.miou(min(result.ious))),
                                ("miou_last", result.miou(max(result.ious)))):
                sums[name] = sums.get(name, 0.0) + float(value.detach())
            sums["n"] = sums.get("n", 0) + 1
        scheduler.step()
        step += 1
        bar.update()
        now = time.perf_counter()
        if step % config.log_every == 0 and sums.get("n"):
            row = {"step": step, "seconds": round(seconds + now - started, 1), "lr": scheduler.get_last_lr()[0],
                   **{k: round(v / sums["n"], 5) for k, v in sums.items() if k != "n"}}
            _log_row(out / "metrics.csv", row)
            bar.set_postfix(loss=row["loss"], miou=row["miou_first"])
            sums = {}
        if now - saved_at > config.save_every_s or step == config.steps:
            _save_last(last, sam, optimizer, scheduler, config, step, seconds + now - started, schedule)
            saved_at = now
        if stop_after_s is not None and now - started > stop_after_s and step < config.steps:
            _save_last(last, sam, optimizer, scheduler, config, step, seconds + now - started, schedule)
            bar.close()
            print(f"lora-sam pretrain: stopped at step {step} after {stop_after_s:.0f} s; run again to go on")
            return {"step": step, "finished": False}
    bar.close()
    total = seconds + time.perf_counter() - started
    return _finish(out, data, config, switch, step, total, schedule, device)


def export_last(out: str | Path, data: str | Path, config: PretrainConfig = PretrainConfig()) -> dict[str, Any]:
    """Write ``base.pth`` and ``pretrain.json`` from ``out/checkpoints/last.pt`` as it stands (a run
    ended early by choice: its learning rate may not have decayed to the end of the schedule)."""
    out = Path(out)
    last = out / "checkpoints" / "last.pt"
    if not last.is_file():
        raise FileNotFoundError(f"{last} does not exist: nothing to export (train first)")
    sam = build_sam(config.model_type, "random", (ORIGINAL_SIZE, ORIGINAL_SIZE))
    switch = ResolutionSwitch(sam)
    optimizer = torch.optim.AdamW(sam.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config))
    step, seconds, schedule = _load_last(last, sam, optimizer, scheduler, config)
    return _finish(out, Path(data), config, switch, step, seconds, schedule)


def _finish(out: Path, data: Path, config: PretrainConfig, switch: ResolutionSwitch, step: int,
            seconds: float, schedule: list[list[int]], device: torch.device | None = None) -> dict[str, Any]:
    base = out / "base.pth"
    with atomic_path(base) as tmp:
        torch.save(switch.official_state_dict(), tmp)
    build_sam(config.model_type, base, (ORIGINAL_SIZE, ORIGINAL_SIZE))  # the official format loads strictly
    record = {"config": asdict(config), "steps": step, "finished": step >= config.steps, "schedule": schedule, "seconds": round(seconds, 1), "data": str(data),
              "checkpoint": str(base), "sha256": sha256(base), "bytes": base.stat().st_size,
              "parameters": sum(v.numel() for v in switch.official_state_dict().values()),
              "threads": torch.get_num_threads(), "device": str(device or "cpu"), "torch": torch.__version__, "cpu": platform.processor() or
              platform.machine(), "python": sys.version.split()[0]}
    (out / "pretrain.json").write_text(json.dumps(record, indent=1))
    print(f"lora-sam pretrain: {step} steps in {seconds / 3600:.2f} h; wrote {base} ({record['bytes'] / 1e6:.1f} MB)")
    return record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Train a small SAM (official classes) from random weights with the interactive recipe, "
                          "at several resolutions; checkpoints every few minutes and resumes from OUT/checkpoints/"
                          "last.pt when run again. Writes OUT/base.pth (official format) and OUT/pretrain.json.")
    default = PretrainConfig()
    parser.add_argument("out", type=Path, help="run folder (checkpoints/, metrics.csv, base.pth, pretrain.json)")
    parser.add_argument("--data", type=Path, required=True, help="training data root (e.g. 'lora-sam synth' output)")
    parser.add_argument("--model-type", default=default.model_type, help=f"default {default.model_type}")
    parser.add_argument("--steps", type=int, default=default.steps, help=f"optimizer steps (default {default.steps})")
    parser.add_argument("--batch-size", type=int, default=default.batch_size,
                        help=f"images per step (default {default.batch_size})")
    parser.add_argument("--lr", type=float, default=default.lr, help=f"peak learning rate (default {default.lr:g})")
    parser.add_argument("--warmup-steps", type=int, default=default.warmup_steps,
                        help=f"linear warm-up steps (default {default.warmup_steps})")
    parser.add_argument("--seed", type=int, default=default.seed,
                        help=f"seed of the batches and prompts (default {default.seed}; give another with --init, "
                             "so the new steps do not replay the first run's)")
    parser.add_argument("--init", default=None, metavar="CHECKPOINT",
                        help="start from this official-format checkpoint (e.g. an earlier base.pth, or 'builtin') "
                             "with a fresh optimiser and schedule, instead of random weights")
    parser.add_argument("--stop-after", type=float, default=None, metavar="MINUTES",
                        help="checkpoint and stop after this many minutes (run again to go on)")
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    parser.add_argument("--export", action="store_true",
                        help="train no further: write base.pth and pretrain.json from checkpoints/last.pt as it is")


def run(args: argparse.Namespace) -> int:
    try:
        config = PretrainConfig(model_type=args.model_type, steps=args.steps, batch_size=args.batch_size,
                                lr=args.lr, warmup_steps=args.warmup_steps, seed=args.seed, init=args.init)
        if args.export:
            export_last(args.out, args.data, config)
        else:
            pretrain(args.out, args.data, config, device=args.device,
                     stop_after_s=None if args.stop_after is None else 60.0 * args.stop_after)
    except (FileNotFoundError, ValueError) as err:
        print(f"lora-sam pretrain: error: {err}", file=sys.stderr)
        return 2
    return 0
