"""``lora-sam pretrain``: train a small SAM from scratch with the full interactive recipe, resumably.

    lora-sam synth runs/pretrain/data --images 1600 --long-side 768 --seed 100 --workers 2
    nohup lora-sam pretrain runs/pretrain --data runs/pretrain/data > runs/pretrain/log.txt &
    lora-sam pretrain runs/pretrain --data runs/pretrain/data       # again: resumes from last.ckpt

The model is the official ``Sam`` (``model_type``, ``tiny`` by default) from random weights, or
from an official checkpoint (``--init``: a longer training in two runs, the second with a fresh
optimiser, warm-up and cosine schedule). It trains on the loop every run trains on: ``LoRASAM``
(every weight, ``finetune="full"``) and the Lightning ``Trainer``, with gradient clipping and
``OptimOptions``' warm-up and cosine decay.
Every step trains at one of ``sizes`` (drawn from (seed, step) with ``size_weights``): one position
table of SAM's 64x64 grid is kept and resized bicubically, with gradients, to each size's patch grid
(``model.ResolutionSwitch``), so the same weights serve 160x256 and SamPredictor's 1024x1024 frame.
A step's images and prompts depend on (seed, step) alone, so a resumed run sees exactly what an
uninterrupted one would.

Checkpoints: ``OUT/checkpoints/last.ckpt`` (a Lightning checkpoint: model, optimiser, schedule, loops,
time so far) every ``save_every_s`` seconds and at the end; a run started again on the same OUT goes on
from it (with the same settings, except ``--steps``: a new total makes the cosine schedule end there).
At the end: ``OUT/base.pth`` in the official checkpoint format (``build_sam`` and
``sam_model_registry`` load it) and ``OUT/pretrain.json`` (settings, steps, seconds, sha256).
``OUT/metrics.csv`` (Lightning's CSVLogger) has the loss terms, mIoU per iteration and the learning rate
every ``log_every`` steps (a resumed call's rows; the earlier calls' are kept as ``metrics_to_step{N}.csv``).
``--export`` writes ``base.pth`` from the last checkpoint without training further (a run ended early).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, LearningRateMonitor
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor

from lora_sam.io import atomic_path, file_sha256
from lora_sam.lora.summary import parameter_summary
from lora_sam.models.checkpoints import BUILTIN_MODEL_TYPE
from lora_sam.models.families import build, family_of, model_types_help
from lora_sam.runs.callbacks import progress_bar
from lora_sam.settings import add_options, from_args, from_dict, to_dict
from lora_sam.training.module import LoRASAM, OptimOptions
from lora_sam.training.recipe import RecipeOptions

__all__ = ["RESUMABLE", "PretrainConfig", "StepBatches", "export_last", "pretrain", "add_arguments", "run"]

RESUMABLE = True
"""A failed run keeps its folder: it holds the checkpoints to resume from (``lora_sam.cli``'s error contract)."""

ORIGINAL_SIZE = 1024  # both families' original frame: the model is built there and switched per batch
_RECIPE = RecipeOptions(masks_per_image=12, focal_weight=0.0, dice_weight=1.0, iou_weight=1.0)
_OPTIM = OptimOptions(lr=1e-3, weight_decay=0.05, warmup_steps=150, final_lr_fraction=0.05)


@dataclass(frozen=True)
class PretrainConfig:
    """What ``pretrain`` trains and how (``lora-sam pretrain``'s options are these fields); saved in
    ``pretrain.json`` and in every checkpoint.

    Args:
        model_type: the model type, of either family.
        steps: optimizer steps in all (a run resumed with another number ends its schedule there).
        sizes: the training sizes (H, W), multiples of 16 (SAM 2.1: squares, multiples of 32: 224x224 448x448);
            each step draws one.
        size_weights: how often each of ``sizes`` is drawn.
        batch_size: images per step.
        grad_clip: the gradients' largest norm.
        seed: seed of the weights, the batches and the prompts (give another with --init, so the new steps
            do not replay the first run's).
        save_every_s: seconds between checkpoints.
        log_every: steps between rows of metrics.csv.
        init: start from this official-format checkpoint (an earlier base.pth, or 'builtin') with a fresh
            optimiser and schedule, instead of random weights.
        recipe: the training recipe (recipe.RecipeOptions): K = 12, dice and IoU loss without the focal term.
        optim: AdamW and its schedule (module.OptimOptions): warm-up, then a cosine to 5 % of lr.
    """

    model_type: str = field(default=BUILTIN_MODEL_TYPE, metadata={"listing": model_types_help})
    steps: int = 2600
    sizes: tuple[tuple[int, int], ...] = ((160, 256), (256, 256), (320, 512))
    size_weights: tuple[float, ...] = (0.75, 0.1, 0.15)
    batch_size: int = 4
    grad_clip: float = 1.0
    seed: int = 0
    save_every_s: float = 300.0
    log_every: int = 25
    init: str | None = None
    recipe: RecipeOptions = field(default=_RECIPE, metadata={"prefix": ""})
    optim: OptimOptions = field(default=_OPTIM, metadata={"prefix": ""})

    def __post_init__(self) -> None:
        check = family_of(self.model_type).check_size
        object.__setattr__(self, "sizes", tuple(check(tuple(size)) for size in self.sizes))
        object.__setattr__(self, "size_weights", tuple(float(w) for w in self.size_weights))
        if len(self.sizes) != len(self.size_weights) or not self.sizes:
            raise ValueError(f"sizes and size_weights must have the same non-zero length, got {self.sizes} and "
                             f"{self.size_weights}")
        if self.steps <= 0 or self.batch_size <= 0:
            raise ValueError(f"steps and batch_size must be positive, got {self.steps} and {self.batch_size}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PretrainConfig:
        """From ``to_dict``'s dict, or the flat one runs wrote before the groups (the recipe and optimiser
        fields beside the others)."""
        values = dict(values)
        for name, kind in (("recipe", RecipeOptions), ("optim", OptimOptions)):
            if name not in values:
                mine = {f.name: values.pop(f.name) for f in fields(kind) if f.name in values}
                values[name] = to_dict(replace(getattr(cls(), name), **mine))
        return from_dict(cls, values)

    def flat(self) -> dict[str, Any]:
        """Every setting by its name, the groups' fields beside the others (as the options name them)."""
        out = {k: v for k, v in to_dict(self).items() if k not in ("recipe", "optim")}
        return {**out, **to_dict(self.recipe), **to_dict(self.optim)}


class StepBatches:
    """A run's training batches, one per step from the trainer's step on (``start()``) to ``steps``.

    The batch of a step: a size drawn from (seed, step), images from (seed, step), targets from the step;
    so a resumed run sees exactly what an uninterrupted one would. Lightning sees a resumable loader
    (``state_dict``): where to go on is the trainer's step, restored before the iteration starts.
    Shard roots are not supported (they cannot be indexed): prepare a folder or a cache.
    """

    def __init__(self, root: Path, config: PretrainConfig, start: Callable[[], int] = lambda: 0) -> None:
        from lora_sam.data.loaders import open_dataset

        self.config, self.start = config, start
        masks = config.recipe.masks_per_image
        frame = "square" if family_of(config.model_type).square else "pad"
        self.datasets = {size: open_dataset(root, image_size=size, masks_per_image=masks, seed=config.seed,
                                            frame=frame) for size in config.sizes}
        first = next(iter(self.datasets.values()))
        if not hasattr(first, "__len__") or len(first) == 0:
            raise ValueError(f"{root}: no training images (an SA-1B folder, a COCO json or a prepared cache is "
                             f"needed; make one with 'lora-sam synth {root} --images 1600')")

    def size_at(self, step: int) -> tuple[int, int]:
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_033 + step)
        weights = torch.tensor(self.config.size_weights, dtype=torch.float64)
        return self.config.sizes[int(torch.multinomial(weights, 1, generator=generator))]

    def at(self, step: int) -> dict[str, Any]:
        from lora_sam.data.samples import collate

        dataset = self.datasets[self.size_at(step)]
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + step)
        count = min(self.config.batch_size, len(dataset))
        picks = torch.randperm(len(dataset), generator=generator)[:count].tolist()
        return collate([dataset[(i, step)] for i in picks])

    def __len__(self) -> int:
        return self.config.steps

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self.at(step) for step in range(self.start(), self.config.steps))

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore: the iteration starts at the trainer's (restored) step."""


class _Pretraining(LoRASAM):
    """``LoRASAM`` training every weight of a model built at 1024 px, at each batch's size (the family's
    ``size_switch``); the checkpoints
    also hold the pretrain settings, the time so far and the schedule's history; ``base.pth`` at the end
    is ``pretrain``'s to write (not LoRASAM's ``model.pth``)."""

    def __init__(self, config: PretrainConfig, seconds: float, schedule: list[list[int]]) -> None:
        super().__init__(model_type=config.model_type, checkpoint=config.init or "random",
                         image_size=(ORIGINAL_SIZE, ORIGINAL_SIZE), finetune="full", recipe=config.recipe,
                         optim=config.optim, seed=config.seed)
        self.switch = family_of(config.model_type).size_switch(self.sam)
        self.config, self.seconds, self.schedule = config, seconds, schedule
        self.started: float | None = None

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        self.switch.set(tuple(batch["image"].shape[-2:]))
        return super().training_step(batch, batch_idx)

    def on_fit_start(self) -> None:
        self.started = time.perf_counter()
        rank_zero_info(f"lora-sam pretrain: {self.config.model_type} at {list(self.config.sizes)}, every weight "
                       f"trains\n{parameter_summary(self.sam)}")

    def elapsed(self) -> float:
        """Seconds of training so far, earlier runs on the same folder included."""
        return self.seconds + (0.0 if self.started is None else time.perf_counter() - self.started)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["pretrain"] = {"config": to_dict(self.config), "seconds": self.elapsed(),
                                  "schedule": self.schedule}

    def on_train_end(self) -> None:
        """Nothing: ``pretrain`` writes ``base.pth`` in the official format."""


class _SaveLast(Callback):
    """``last.ckpt`` every ``every_s`` seconds and at the end of training; ``stop_after_s`` ends training."""

    def __init__(self, path: Path, every_s: float, stop_after_s: float | None) -> None:
        self.path, self.every_s, self.stop_after_s = path, every_s, stop_after_s
        self.started = self.saved = time.perf_counter()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started = self.saved = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.perf_counter()
        if self.stop_after_s is not None and now - self.started > self.stop_after_s:
            trainer.should_stop = True  # on_train_end saves
        elif now - self.saved > self.every_s:
            self.save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save(trainer)

    def save(self, trainer: pl.Trainer) -> None:
        with atomic_path(self.path) as tmp:
            trainer.save_checkpoint(tmp)
        self.saved = time.perf_counter()


def _resume_state(last: Path, config: PretrainConfig) -> tuple[int, float, list[list[int]]]:
    """Step, seconds so far and the schedule's history ([step, total steps from there] pairs) of ``last``.

    Only ``steps`` may differ from the saved settings: the cosine schedule then runs to the new
    total from the saved step on (a run extended, or ended sooner with its learning rate decayed)."""
    if not last.is_file():
        old = last.with_name("last.pt")
        if old.is_file():
            raise ValueError(f"{old} was written by lora-sam pretrain before it trained through Lightning and "
                             f"cannot be resumed; write its base.pth with --export")
        return 0, 0.0, [[0, config.steps]]
    state = torch.load(last, map_location="cpu", weights_only=False)
    record, step = state["pretrain"], int(state["global_step"])
    saved = PretrainConfig.from_dict(record["config"]).flat()
    differ = [k for k, v in config.flat().items() if saved.get(k) != v and k != "steps"]
    if differ:
        raise ValueError(f"{last} was saved with other settings ({', '.join(differ)}); use another OUT folder "
                         f"or the same settings to resume (only --steps may change)")
    if config.steps < step:
        raise ValueError(f"{last} is at step {step} already: --steps must be at least that, got {config.steps}")
    schedule = record["schedule"]
    if config.steps != schedule[-1][1]:
        schedule = [*schedule, [step, config.steps]]
        print(f"lora-sam pretrain: the schedule now ends at step {config.steps} (was {schedule[-2][1]})", flush=True)
    return step, float(record["seconds"]), schedule


sha256 = file_sha256  # the name model_card and distill import


def _keep_metrics(out: Path, step: int) -> None:
    """Lightning's ``CSVLogger`` deletes ``metrics.csv`` when training starts again: keep the earlier calls'
    rows as ``metrics_to_step{step}.csv`` (``-2``, ``-3`` ... when that name is taken)."""
    metrics = out / "metrics.csv"
    if not metrics.is_file():
        return
    kept, n = out / f"metrics_to_step{step}.csv", 1
    while kept.exists():
        n += 1
        kept = out / f"metrics_to_step{step}-{n}.csv"
    metrics.rename(kept)


def _trainer(out: Path, config: PretrainConfig, device: torch.device, stop_after_s: float | None,
             progress: bool) -> pl.Trainer:
    callbacks: list[Callback] = [_SaveLast(out / "checkpoints" / "last.ckpt", config.save_every_s, stop_after_s),
                                 LearningRateMonitor(logging_interval="step")]
    return pl.Trainer(
        max_steps=config.steps, accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=[device.index or 0] if device.type == "cuda" else 1, gradient_clip_val=config.grad_clip,
        logger=CSVLogger(out, name="", version="", flush_logs_every_n_steps=config.log_every),
        log_every_n_steps=config.log_every, callbacks=[*callbacks, *([progress_bar()] if progress else [])],
        enable_progress_bar=progress, enable_checkpointing=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=out)


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
    last = out / "checkpoints" / "last.ckpt"
    step, seconds, schedule = _resume_state(last, config)
    if step:
        print(f"lora-sam pretrain: resuming {last} at step {step} ({seconds / 60:.1f} min so far)", flush=True)
        _keep_metrics(out, step)
    torch.manual_seed(config.seed)  # the random weights (a resumed run loads its own over them)
    module = _Pretraining(config, seconds, schedule)
    trainer = _trainer(out, config, device, stop_after_s, progress)
    batches = StepBatches(data, config, start=lambda: trainer.global_step)
    with warnings.catch_warnings():  # its "will be deleted" is about metrics.csv, kept above (_keep_metrics)
        warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
        trainer.fit(module, train_dataloaders=batches, ckpt_path=last if step else None)
    if trainer.global_step < config.steps:
        print(f"lora-sam pretrain: stopped at step {trainer.global_step} after {stop_after_s or 0:.0f} s; "
              f"run again to go on")
        return {"step": trainer.global_step, "finished": False}
    state = module.switch.to_official(module.sam.state_dict())
    return _finish(out, data, config, state, trainer.global_step, module.elapsed(), module.schedule, device)


def export_last(out: str | Path, data: str | Path) -> dict[str, Any]:
    """Write ``base.pth`` and ``pretrain.json`` from ``out/checkpoints/last.ckpt`` as it stands (a run
    ended early by choice: its learning rate may not have decayed to the end of the schedule). A
    ``last.pt`` of a run trained before pretrain ran on Lightning exports too."""
    folder = Path(out) / "checkpoints"
    if (folder / "last.ckpt").is_file():
        state = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=False)
        record, step = state["pretrain"], int(state["global_step"])
        weights = {k.removeprefix("sam."): v for k, v in state["state_dict"].items()}
    elif (folder / "last.pt").is_file():
        record = state = torch.load(folder / "last.pt", map_location="cpu", weights_only=False)
        step, weights = int(state["step"]), state["model"]
    else:
        raise FileNotFoundError(f"{folder / 'last.ckpt'} does not exist: nothing to export (train first)")
    config = PretrainConfig.from_dict(record["config"])
    schedule = record.get("schedule", [[0, config.steps]])
    switch = family_of(config.model_type).size_switch
    return _finish(Path(out), Path(data), config, switch.to_official(weights), step,
                   float(record["seconds"]), schedule)


def _finish(out: Path, data: Path, config: PretrainConfig, state: dict[str, Tensor], step: int,
            seconds: float, schedule: list[list[int]], device: torch.device | None = None) -> dict[str, Any]:
    base = out / "base.pth"
    with atomic_path(base) as tmp:
        torch.save(family_of(config.model_type).to_checkpoint(state), tmp)
    build(config.model_type, base, (ORIGINAL_SIZE, ORIGINAL_SIZE))  # the official format loads strictly
    record = {"config": to_dict(config), "steps": step, "finished": step >= config.steps, "schedule": schedule,
              "seconds": round(seconds, 1), "data": str(data), "checkpoint": str(base), "sha256": sha256(base),
              "bytes": base.stat().st_size, "parameters": sum(v.numel() for v in state.values()),
              "threads": torch.get_num_threads(), "device": str(device or "cpu"), "torch": torch.__version__,
              "cpu": platform.processor() or platform.machine(), "python": sys.version.split()[0]}
    (out / "pretrain.json").write_text(json.dumps(record, indent=1))
    print(f"lora-sam pretrain: {step} steps in {seconds / 3600:.2f} h; wrote {base} ({record['bytes'] / 1e6:.1f} MB)")
    return record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Train a small SAM (official classes) from random weights with the interactive recipe, "
                          "at several resolutions, on LoRASAM and the Lightning Trainer; checkpoints every few "
                          "minutes and resumes from OUT/checkpoints/last.ckpt when run again. Writes OUT/base.pth "
                          "(official format) and OUT/pretrain.json.")
    parser.add_argument("out", type=Path, help="run folder (checkpoints/, metrics.csv, base.pth, pretrain.json)")
    parser.add_argument("--data", type=Path, required=True, help="training data root (e.g. 'lora-sam synth' output)")
    add_options(parser, PretrainConfig)
    parser.add_argument("--stop-after", type=float, default=None, metavar="MINUTES",
                        help="checkpoint and stop after this many minutes (run again to go on)")
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    parser.add_argument("--export", action="store_true",
                        help="train no further: write base.pth and pretrain.json from checkpoints/last.ckpt as it is")


def run(args: argparse.Namespace) -> int:
    if args.export:
        export_last(args.out, args.data)
    else:
        pretrain(args.out, args.data, from_args(PretrainConfig, args), device=args.device,
                 stop_after_s=None if args.stop_after is None else 60.0 * args.stop_after)
    return 0
