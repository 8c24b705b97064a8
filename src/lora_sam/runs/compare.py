"""LoRA against fully unfrozen SAM: the same base, data, seed and number of steps; what each costs and gives.

``compare`` trains ``LoRASAM(finetune="lora")`` and ``LoRASAM(finetune="full")`` one after the
other and records, for each: trainable parameters, mean time per training step, peak memory,
the sizes of the weights file and of the Lightning checkpoint, and the evaluation metrics of the
result (``lora_sam.evaluation.protocol``), beside those of the base model at step 0. Layout of ``out_dir``::

    base.pth                  the base weights, when none were given (random tiny / random vit_*)
    lora/ full/               metrics.csv (train and val curves), hparams.yaml, adapter.safetensors
                              or model.pth, checkpoints/final.ckpt, iterations.pt (``runs.records``)
    eval.json, eval.md        ``lora-sam eval`` of base, lora:adapter, full:model (+ original-1024)
    compare.json, compare.md  the comparison

``compare.json``::

    {"settings": {...},
     "base": {"checkpoint": str, "generated": bool, "metrics": {metric: float | None}},
     "runs": {"lora" | "full": {"trainable_params", "total_params", "params_by_part": [{"part",
              "total", "trainable"}], "steps", "step_time_s",
              "step_times_s": [s], "train_seconds", "memory": {"kind", "start_bytes", "peak_bytes",
              "growth_bytes"}, "weights_file", "weights_bytes", "checkpoint_file", "checkpoint_bytes",
              "metrics_csv", "device", "eval_name", "metrics": {metric: float | None},
              "deployed_metrics": (with ``original``) merged, SamPredictor at 1024 px}},
     "original": {"metrics": ...} (with ``original``), "eval_json": str}
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger

from lora_sam.data.loaders import LoaderOptions
from lora_sam.evaluation.options import EVAL_DEFAULTS, EvalModels, EvalOptions
from lora_sam.evaluation.protocol import json_safe
from lora_sam.evaluation.run import evaluate_models
from lora_sam.io import markdown_table
from lora_sam.lora import LoRAOptions
from lora_sam.models.checkpoints import fine_tune_defaults
from lora_sam.models.families import data_frame, model_types_help
from lora_sam.report.numbers import cost_note, cost_table
from lora_sam.runs.allocator import tune_allocator
from lora_sam.runs.callbacks import PeakMemory, StepTimer, progress_bar, quiet_framework
from lora_sam.runs.records import IterationRecords
from lora_sam.settings import MODEL_TYPE, VAL_FRACTION, add_options, from_args, from_dict, to_dict
from lora_sam.training.metrics import metric_rows
from lora_sam.training.module import OptimOptions
from lora_sam.training.recipe import RecipeOptions

__all__ = ["MODES", "CompareConfig", "CompareRun", "add_arguments", "compare", "compare_markdown", "run"]

MODES = ("lora", "full")
WEIGHTS_FILE = {"lora": "adapter.safetensors", "full": "model.pth"}
_TRAINING_EVAL = ("split", "val_fraction", "seed")  # the evaluation takes the training run's


def _base_checkpoint(out_dir: Path, model_type: str, checkpoint: str | Path | None, seed: int) -> tuple[Path, bool]:
    """The base weights file both runs start from; random weights are drawn once and saved."""
    from lora_sam.models.checkpoints import resolve_checkpoint
    from lora_sam.models.families import build, family_of

    path = resolve_checkpoint(model_type, checkpoint)
    if path is not None:
        return path, False
    pl.seed_everything(seed, verbose=False)
    sam = build(model_type, checkpoint, (1024, 1024)).module
    path = out_dir / "base.pth"
    torch.save(family_of(model_type).to_checkpoint(sam.state_dict()), path)
    return path, True


def _loaders(run: CompareRun) -> tuple[Any, Any]:
    """Both runs' loaders: the data in the model family's frame (SAM 2.1: a square the image fills)."""
    from lora_sam.data.loaders import get_loaders

    c = run.config
    image_size, frame = data_frame(c.model_type, c.image_size)
    return get_loaders(run.data, image_size=image_size, batch_size=c.batch_size,
                       masks_per_image=c.recipe.masks_per_image, val_fraction=c.val_fraction,
                       num_workers=c.num_workers, seed=c.seed, frame=frame)


def _train(mode: str, out_dir: Path, run: CompareRun) -> dict[str, Any]:
    from lora_sam.lora.summary import parameter_summary
    from lora_sam.training.module import LoRASAM

    c = run.config
    pl.seed_everything(c.seed, verbose=False)
    train_loader, val_loader = _loaders(run)
    model = LoRASAM(model_type=c.model_type, checkpoint=run.checkpoint, image_size=c.image_size, finetune=mode,
                    lora=c.lora, recipe=c.recipe, optim=run.optim(mode), seed=c.seed)
    run_dir = out_dir / mode
    (run_dir / "metrics.csv").unlink(missing_ok=True)
    timer, memory = StepTimer(), PeakMemory()
    validation: dict[str, Any] = {"limit_val_batches": 0}
    if val_loader is not None:
        validation = {"val_check_interval": run.val_every, "check_val_every_n_epoch": None,
                      "limit_val_batches": c.val_batches or 1.0}
    trainer = pl.Trainer(
        max_steps=c.steps, accelerator=c.accelerator, devices=1,
        logger=CSVLogger(str(out_dir), name=mode, version=""),
        callbacks=[timer, memory, IterationRecords(), *([progress_bar()] if run.progress else [])],
        enable_checkpointing=False, num_sanity_val_steps=0, log_every_n_steps=1,
        enable_progress_bar=run.progress, enable_model_summary=False, default_root_dir=str(out_dir),
        **({"precision": c.precision} if c.precision else {}), **validation,
    )
    start = time.perf_counter()
    trainer.fit(model, train_loader, val_loader)
    seconds = time.perf_counter() - start
    checkpoint = run_dir / "checkpoints" / "final.ckpt"
    trainer.save_checkpoint(checkpoint)
    weights = run_dir / WEIGHTS_FILE[mode]
    if not weights.is_file():
        raise RuntimeError(f"{mode} run: {weights} was not written at the end of training")
    params = list(model.sam.parameters())
    parts = [{"part": c.part, "total": c.total, "trainable": c.trainable} for c in parameter_summary(model.sam).parts]
    record = {
        "trainable_params": sum(p.numel() for p in params if p.requires_grad),
        "total_params": sum(p.numel() for p in params),
        "params_by_part": parts,
        "steps": int(trainer.global_step),
        "step_time_s": timer.mean(skip=1),
        "step_times_s": timer.times,
        "train_seconds": seconds,
        "memory": memory.result,
        "weights_file": str(weights),
        "weights_bytes": weights.stat().st_size,
        "checkpoint_file": str(checkpoint),
        "checkpoint_bytes": checkpoint.stat().st_size,
        "metrics_csv": str(run_dir / "metrics.csv"),
        "device": memory.result.get("device", "n/a"),  # while training (the module is back on the CPU now)
    }
    del model, trainer, train_loader, val_loader
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return record


def _train_job(job_path: str) -> None:
    """Entry point of the child process of ``_train_isolated``: run the job file, write its result."""
    job = json.loads(Path(job_path).read_text())
    tune_allocator()  # as the lora-sam command that started this process (runs/allocator.py)
    torch.set_num_threads(job["threads"])
    run = from_dict(CompareRun, job["run"])
    if run.quiet:
        quiet_framework()
    record = _train(job["mode"], Path(job["out_dir"]), run)
    Path(job["result"]).write_text(json.dumps(json_safe(record)))


def _train_isolated(mode: str, out_dir: Path, run: CompareRun) -> dict[str, Any]:
    """``_train`` in a fresh Python process, so neither run inherits the other's memory or warm-up."""
    run_dir = out_dir / mode
    run_dir.mkdir(parents=True, exist_ok=True)
    job, result = run_dir / "job.json", run_dir / "run.json"
    result.unlink(missing_ok=True)
    job.write_text(json.dumps({"mode": mode, "out_dir": str(out_dir), "run": to_dict(run),
                               "threads": torch.get_num_threads(), "result": str(result)}))
    code = "import sys; from lora_sam.runs.compare import _train_job; _train_job(sys.argv[1])"
    returncode = subprocess.run([sys.executable, "-c", code, str(job)], check=False).returncode
    if returncode != 0 or not result.is_file():
        raise RuntimeError(f"the {mode} training run failed (exit code {returncode}; job {job}); "
                           f"its error is printed above")
    return json.loads(result.read_text())


@dataclass(frozen=True)
class CompareConfig:
    """What ``compare`` trains and evaluates (``lora-sam compare``'s options are these fields).

    Args:
        model_type: the base's model type, of either family.
        checkpoint: the base SAM checkpoint (None: as build_sam finds it; random weights are drawn once from
            the seed and saved as base.pth when there is no file).
        image_size: the training resolution (H, W); None: the family's default (SAM v1 160x256, SAM 2.1 224x224).
        steps: optimizer steps of each run.
        seed: seed of the data split, the target draws, the prompts and any random weights.
        batch_size: images per step.
        lr_lora: LoRA's learning rate (None: the base's default).
        lr_full: full fine-tuning's learning rate (None: the base's default).
        warmup_steps: linear warm-up steps (None: min(50, steps / 10)).
        val_every: steps between validations (None: steps / 10).
        val_fraction: the val share of the data (the curves and the evaluation).
        val_batches: at most this many batches per validation (None: all).
        num_workers: data loader worker processes.
        accelerator: Lightning's accelerator (one device).
        precision: Lightning's precision, e.g. bf16-mixed (None: Lightning's).
        original: also evaluate SamPredictor at 1024 px: the base, and LoRA and full as deployed (merged).
        lora: the LoRA settings (lora.LoRAOptions).
        recipe: the training recipe (recipe.RecipeOptions), the same for both runs.
        eval: the evaluation (evaluation.options.EvalOptions); its split, val share and seed are the training's.
    """

    model_type: str = field(default=MODEL_TYPE, metadata={"listing": model_types_help})
    checkpoint: str | None = None
    image_size: tuple[int, int] | None = None
    steps: int = 100
    seed: int = 0
    batch_size: int = LoaderOptions.batch_size
    lr_lora: float | None = None
    lr_full: float | None = None
    warmup_steps: int | None = None
    val_every: int | None = None
    val_fraction: float = VAL_FRACTION
    val_batches: int | None = None
    num_workers: int = 0
    accelerator: str = "auto"
    precision: str | None = None
    original: bool = False
    lora: LoRAOptions = LoRAOptions()
    recipe: RecipeOptions = RecipeOptions()
    eval: EvalOptions = field(default=EVAL_DEFAULTS, metadata={"prefix": "eval_", "skip": _TRAINING_EVAL})

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", data_frame(self.model_type, self.image_size)[0])
        if self.checkpoint is not None:
            object.__setattr__(self, "checkpoint", str(self.checkpoint))
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


@dataclass(frozen=True)
class CompareRun:
    """What both runs of ``compare`` use: its ``CompareConfig`` resolved against the data and the base. It goes
    whole to each run's process (the job file) and ``record()`` is ``compare.json``'s settings.

    Args:
        config: the comparison as given.
        data: the data root.
        checkpoint: the base weights file both runs start from.
        lr_lora: LoRA's learning rate (the config's, else the base's default).
        lr_full: full fine-tuning's learning rate (the config's, else the base's default).
        defaults: where the base's defaults came from.
        warmup_steps: linear warm-up steps (the config's, else min(50, steps / 10)).
        val_every: steps between validations (the config's, else steps / 10).
        progress: progress bars.
        quiet: Lightning's info lines and routine warnings off.
    """

    config: CompareConfig
    data: str
    checkpoint: str
    lr_lora: float
    lr_full: float
    defaults: str
    warmup_steps: int
    val_every: int
    progress: bool
    quiet: bool

    @classmethod
    def resolve(cls, config: CompareConfig, data: str, base_path: Path, *, progress: bool, quiet: bool) -> CompareRun:
        c = config
        defaults, source = fine_tune_defaults(c.model_type, str(base_path))
        return cls(c, data, str(base_path), defaults["lr"]["lora"] if c.lr_lora is None else c.lr_lora,
                   defaults["lr"]["full"] if c.lr_full is None else c.lr_full, source,
                   min(50, c.steps // 10) if c.warmup_steps is None else c.warmup_steps,
                   max(1, c.steps // 10) if c.val_every is None else c.val_every, progress, quiet)

    def optim(self, mode: str) -> OptimOptions:
        """The optimiser of one mode's run: its learning rate and the warm-up."""
        return OptimOptions(lr=self.lr_lora if mode == "lora" else self.lr_full, warmup_steps=self.warmup_steps)

    def record(self) -> dict[str, Any]:
        """``compare.json``'s settings: the config as given (``config``) and what the runs used, resolved."""
        c = self.config
        changed = {k: v for k, v in to_dict(c.recipe).items() if v != getattr(RecipeOptions(), k)}
        return {
            "data": self.data, "model_type": c.model_type, "checkpoint": self.checkpoint,
            "image_size": list(c.image_size), "steps": c.steps, "rank": c.lora.rank, "alpha": c.lora.alpha,
            "seed": c.seed, "batch_size": c.batch_size, "masks_per_image": c.recipe.masks_per_image,
            "lr": {"lora": self.lr_lora, "full": self.lr_full}, "defaults": self.defaults,
            "warmup_steps": self.warmup_steps, "val_every": self.val_every, "val_fraction": c.val_fraction,
            "val_batches": c.val_batches, "num_workers": c.num_workers, "accelerator": c.accelerator,
            "precision": c.precision, "progress": self.progress, "quiet": self.quiet, "module_options": changed,
            "eval": {"images": c.eval.max_images, "masks_per_image": c.eval.masks_per_image,
                     "max_clicks": c.eval.max_clicks}, "config": to_dict(c),
        }


def compare(
    data_root: str | Path | None,
    out_dir: str | Path,
    config: CompareConfig = CompareConfig(),
    *,
    isolate: bool = True,
    progress: bool = True,
    quiet: bool = False,
) -> dict[str, Any]:
    """Train LoRA and fully unfrozen SAM alike, evaluate both, write ``compare.json`` / ``compare.md``.

    Args:
        data_root: data for ``get_loaders`` (train split to train, val split for curves and evaluation).
        out_dir: run folder (see the module docstring).
        config: the base, the training of both runs and the evaluation (``CompareConfig``).
        isolate: train each mode in a fresh Python process (``sys.executable``), so that time and
            memory are not shared between the runs (``False``: one after the other in this process).
        progress, quiet: progress bars; ``quiet`` also turns Lightning's info lines and routine warnings off.

    Returns:
        The content of ``compare.json`` (see the module docstring); its ``settings["config"]`` is
        ``config`` as a dict (``settings.from_dict(CompareConfig, ...)`` reads it back).
    """
    from lora_sam.data.loaders import resolve_root

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base_path, generated = _base_checkpoint(out, config.model_type, config.checkpoint, config.seed)
    run = CompareRun.resolve(config, resolve_root(data_root), base_path, progress=progress, quiet=quiet)
    if quiet:
        quiet_framework()
    train = _train_isolated if isolate else _train
    runs = {mode: train(mode, out, run) for mode in MODES}
    result = _evaluate(out, run, runs, generated=generated)
    (out / "compare.json").write_text(json.dumps(result, indent=1))
    (out / "compare.md").write_text(compare_markdown(result))
    return result


def _evaluate(out: Path, run: CompareRun, runs: dict[str, dict[str, Any]], *, generated: bool) -> dict[str, Any]:
    """Evaluate the base, LoRA and full models alike (``eval.json``); the content of ``compare.json``."""
    config = run.config
    models = EvalModels(config.model_type, run.checkpoint, config.image_size, (runs["lora"]["weights_file"],),
                        (runs["full"]["weights_file"],), original=config.original)
    options = replace(config.eval, split="val", val_fraction=config.val_fraction, seed=config.seed)
    report = evaluate_models(run.data, out, models, options, progress=run.progress)
    models = report["models"]
    for mode, name in (("lora", "lora:adapter"), ("full", "full:model")):
        runs[mode].update(eval_name=name, metrics=models[name]["metrics"])
        if f"{name}@1024" in models:  # as users deploy it: merged, SamPredictor at 1024 px
            runs[mode]["deployed_metrics"] = models[f"{name}@1024"]["metrics"]
    result = {"settings": run.record(), "base": {"checkpoint": run.checkpoint, "generated": generated,
                                             "metrics": models["base"]["metrics"]},
              "runs": runs, "eval_json": str(out / "eval.json")}
    if "original-1024" in models:
        result["original"] = {"metrics": models["original-1024"]["metrics"]}
    return json_safe(result)


def compare_markdown(result: dict[str, Any]) -> str:
    """``compare.md``: the cost table (one column per mode) and the metrics table (base, lora, full)."""
    s, runs = result["settings"], result["runs"]
    table = {"base (step 0)": result["base"]["metrics"], "lora": runs["lora"]["metrics"],
             "full": runs["full"]["metrics"]}
    if "original" in result:
        table["original-1024"] = result["original"]["metrics"]
    for mode in MODES:
        if "deployed_metrics" in runs[mode]:
            table[f"{mode} merged, 1024 px"] = runs[mode]["deployed_metrics"]
    lines = [
        "# LoRA vs fully unfrozen SAM", "",
        f"{s['model_type']} at {s['image_size'][0]}x{s['image_size'][1]} from `{s['checkpoint']}`, "
        f"{s['steps']} steps each, batch {s['batch_size']} images x {s['masks_per_image']} masks, seed {s['seed']}; "
        f"LoRA rank {s['rank']}, alpha {s['alpha']:g}, lr {s['lr']['lora']:g}; full lr {s['lr']['full']:g}; "
        f"device {runs['lora']['device']}.", "",
        cost_table(runs), "",
        cost_note(runs), "",
        "## Metrics (validation images)", "",
        markdown_table(*metric_rows(table)), "",
        f"Per-prompt results: `{result['eval_json']}`; curves: `<mode>/metrics.csv`.",
    ]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Train LoRA and fully unfrozen SAM from the same base, data, seed and steps; "
                          "write DIR/compare.json and DIR/compare.md (and eval.json / eval.md)")
    parser.add_argument("--data", default=None, help="data root (default $LORA_SAM_DATA, then ./data)")
    parser.add_argument("--out", type=Path, default=Path("runs/compare"), help="run folder (default runs/compare)")
    add_options(parser, CompareConfig)
    parser.add_argument("--in-process", action="store_true",
                        help="train both modes in this process (default: each in a fresh process)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    result = compare(args.data, args.out, from_args(CompareConfig, args), isolate=not args.in_process,
                     progress=not args.quiet)
    print(compare_markdown(result), end="")
    print(f"wrote {args.out / 'compare.json'} and {args.out / 'compare.md'}")
    return 0
