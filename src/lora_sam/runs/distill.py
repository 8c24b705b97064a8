"""``lora-sam distill``: start a small SAM 2.1 from a trained SAM v1 base, before ``lora-sam pretrain``.

    lora-sam distill runs/distill --data runs/pretrain_sam2/data            # sam2.1_mini from the v1 base
    lora-sam pretrain runs/pretrain_sam2 --data runs/pretrain_sam2/data --model-type sam2.1_mini \\
        --init runs/distill/distilled.pt ...

Why: from random weights, the interactive recipe leaves a small SAM 2.1 predicting the whole frame for
every prompt (it learns not to use the image; BENCHMARKS.md, "SAM 2.1"), where v1's ``tiny`` leaves that
plateau after about 600 steps. Both families share the prompt encoder and the mask decoder's design, so
the v1 base's decoder side can be copied, and what is left to learn is an image encoder whose embedding
that decoder reads: a dense regression, which trains in minutes.

Two steps:
1. ``warm_start``: the student's prompt encoder and mask decoder from the teacher's (SAM 2's wider MLPs
   and IoU head hold the teacher's as a block, the other units switched off, so each computes what the
   teacher's does, SAM 2's IoU head then taking a sigmoid); ``conv_s0`` / ``conv_s1`` (the high-resolution features) and ``no_mem_embed`` at zero,
   so the mask upscaling starts as v1's. The attention splits the same projections into 8 heads instead
   of the teacher's 4, which the recipe's training then adapts. Two things of SAM 2.1's decoder side have no
   counterpart in v1 and are not copied: the object-score token, one more output token among those the
   transformer attends with (its head too, trained from ``lora-sam pretrain`` on, by SAM 2.1's object-score
   loss), and the padding point after a box (SAM 2.1 gets a box as two corner points and pads them with a
   not-a-point token, where v1 adds none after a box), so a box's tokens differ from the teacher's.
2. The student's Hiera trunk and FPN neck learn the teacher's image embedding (mean squared error), both
   models seeing the same image in the same square frame (the teacher's position table resized to it).

Checkpoints: ``OUT/last.pt`` every ``save_every_s`` seconds and at the end; the same command again goes on
from it. A step's images depend on (seed, step) alone. At the end: ``OUT/distilled.pt`` in Meta's format
(``{"model": state_dict}``) and ``OUT/distill.json`` (settings, steps, seconds, the loss's start and end,
sha256); ``OUT/metrics.csv`` has the loss every ``log_every`` steps.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from lora_sam.data.loaders import open_dataset
from lora_sam.data.samples import collate
from lora_sam.io import atomic_path
from lora_sam.models.checkpoints import BUILTIN_MODEL_TYPE
from lora_sam.models.families import build, family_of
from lora_sam.models.sam2_1.config import check_side
from lora_sam.models.sam2_1.model import to_checkpoint
from lora_sam.runs.pretrain import sha256
from lora_sam.settings import add_options, from_args
from lora_sam.training.module import OptimOptions

__all__ = ["RESUMABLE", "DistillConfig", "distill", "warm_start", "add_arguments", "run"]

RESUMABLE = True
"""A failed run keeps its folder: it holds the checkpoints to resume from (``lora_sam.cli``'s error contract)."""

_DECODER_PARTS = (("sam_prompt_encoder.", "prompt_encoder."), ("sam_mask_decoder.", "mask_decoder."))
_ZEROED = ("sam_mask_decoder.conv_s0.", "sam_mask_decoder.conv_s1.", "no_mem_embed")


def _teacher_key(key: str) -> str | None:
    for mine, theirs in _DECODER_PARTS:
        if key.startswith(mine):
            key = theirs + key.removeprefix(mine)
            if ".transformer.layers." in key:  # SAM 2's MLP(layers.0, layers.1) is v1's MLPBlock(lin1, lin2)
                key = key.replace(".mlp.layers.0.", ".mlp.lin1.").replace(".mlp.layers.1.", ".mlp.lin2.")
            return key
    return None


def _embed(target: Tensor, source: Tensor, key: str) -> None:
    """``source`` into the leading block of the larger ``target``, the rest zero. A layer's extra output
    units then feed only zero weights of the next layer (zero too), so the wider MLP computes the narrower."""
    if target.dim() != source.dim() or any(t < s for t, s in zip(target.shape, source.shape)):
        raise ValueError(f"{key}: the teacher's {tuple(source.shape)} does not fit the student's "
                         f"{tuple(target.shape)}; the teacher's prompt_embed_dim must be the student's d_model")
    target.zero_()
    target[tuple(slice(0, n) for n in source.shape)].copy_(source)


@torch.no_grad()
def warm_start(student: nn.Module, teacher: nn.Module) -> list[str]:
    """Copy a SAM v1 ``teacher``'s prompt encoder and mask decoder into a SAM 2 ``student`` (module doc);
    returns the student's keys that took a teacher's tensor."""
    theirs = teacher.state_dict()
    copied = []
    for key, value in student.state_dict().items():
        if key.startswith(_ZEROED):
            value.zero_()
            continue
        source = theirs.get(_teacher_key(key) or "")
        if source is None:
            continue
        if source.shape == value.shape:
            value.copy_(source)
        else:
            _embed(value, source, key)
        copied.append(key)
    return copied


@dataclass(frozen=True)
class DistillConfig:
    """What ``distill`` trains (``lora-sam distill``'s options).

    Args:
        model_type: the student, a SAM 2.1 model type (``sam2.1_mini``).
        teacher: the teacher's official-format checkpoint, or ``builtin`` (the shipped v1 base).
        teacher_type: the teacher's model type (SAM v1).
        side: the square frame both models see (a multiple of 32).
        steps: optimiser steps.
        batch_size: images per step.
        lr: AdamW's learning rate (a warm-up of 50 steps, or a tenth of the run when shorter, then a cosine
            to 5 %).
        seed: the student's random weights and the steps' images.
        save_every_s: seconds between checkpoints (``last.pt``).
        log_every: steps between rows of ``metrics.csv``.
    """

    model_type: str = "sam2.1_mini"
    teacher: str = "builtin"
    teacher_type: str = BUILTIN_MODEL_TYPE
    side: int = 224
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-3
    seed: int = 0
    save_every_s: float = 300.0
    log_every: int = 25

    def __post_init__(self) -> None:
        if family_of(self.model_type).name != "sam2.1" or family_of(self.teacher_type).name != "sam_v1":
            raise ValueError(f"distill trains a SAM 2.1 student from a SAM v1 teacher, got model_type "
                             f"{self.model_type!r} and teacher_type {self.teacher_type!r}")
        check_side(self.side)
        if self.steps <= 0 or self.batch_size <= 0:
            raise ValueError(f"steps and batch_size must be positive, got {self.steps} and {self.batch_size}")


def _schedule(config: DistillConfig) -> OptimOptions:
    return OptimOptions(lr=config.lr, weight_decay=0.01, warmup_steps=min(50, config.steps // 10),
                        final_lr_fraction=0.05)


def _batch(dataset: Any, config: DistillConfig, step: int) -> Tensor:
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    picks = torch.randint(len(dataset), (config.batch_size,), generator=generator).tolist()
    return collate([dataset[(i, 0)] for i in picks])["image"].float()


def _save(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _log(out: Path, row: dict[str, float]) -> None:
    path = out / "metrics.csv"
    new = not path.is_file()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _models(config: DistillConfig, resume: dict[str, Any] | None) -> tuple[Any, Any]:
    size = (config.side, config.side)
    teacher = build(config.teacher_type, config.teacher, size)
    teacher.module.eval().requires_grad_(False)
    torch.manual_seed(config.seed)
    student = build(config.model_type, "random", size)  # not a built-in base: the student starts here
    if resume is not None:
        student.module.load_state_dict(resume["model"])
    else:
        warm_start(student.module, teacher.module)
    for name, parameter in student.module.named_parameters():
        parameter.requires_grad_(name.startswith("image_encoder.") or name == "no_mem_embed")
    return teacher, student


def _finish(out: Path, config: DistillConfig, student: nn.Module, record: dict[str, Any]) -> dict[str, Any]:
    path = out / "distilled.pt"
    with atomic_path(path) as tmp:
        torch.save(to_checkpoint(student.state_dict()), tmp)
    record = {**record, "config": asdict(config), "weights": path.name, "sha256": sha256(path)}
    (out / "distill.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def distill(out: str | Path, data: str | Path, config: DistillConfig = DistillConfig(), *,
            stop_after_s: float | None = None, progress: bool = True) -> dict[str, Any]:
    """Warm-start ``config.model_type`` from the teacher and train its image encoder on the teacher's
    embedding of the images of ``data`` (module doc); resumes from ``OUT/last.pt``. Returns ``distill.json``'s
    record, or ``{"step": n, "finished": False}`` when ``stop_after_s`` ended this call first (a checkpoint
    saved: call again to go on)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    last = out / "last.pt"
    resume = torch.load(last, map_location="cpu", weights_only=False) if last.is_file() else None
    if resume is not None and resume["config"] != {**asdict(config), "steps": resume["config"]["steps"]}:
        raise ValueError(f"{last} was written with other settings ({resume['config']}); use another OUT or "
                         f"the same settings")
    teacher, student = _models(config, resume)
    dataset = open_dataset(Path(data), image_size=(config.side, config.side), masks_per_image=1, seed=config.seed,
                           frame="square")
    trained = [p for p in student.module.parameters() if p.requires_grad]
    optim = _schedule(config)
    optimizer = torch.optim.AdamW(trained, lr=config.lr, weight_decay=optim.weight_decay)
    step, seconds, first, value = 0, 0.0, None, float("nan")
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        step, seconds, first, value = resume["step"], resume["seconds"], resume["first_loss"], resume["last_loss"]
    start, saved = time.monotonic() - seconds, time.monotonic()
    stop_at = None if stop_after_s is None else time.monotonic() + stop_after_s
    bar = tqdm(total=config.steps, initial=step, desc="distill", disable=not progress, unit="step")
    while step < config.steps:
        images = _batch(dataset, config, step)
        with torch.no_grad():
            target = teacher.encode(images, None)
        loss = torch.nn.functional.mse_loss(student.encode(images, None).embedding, target) / target.var()
        for group in optimizer.param_groups:
            group["lr"] = config.lr * optim.factor(step, config.steps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        value = float(loss.detach())
        first = value if first is None else first
        bar.update(1)
        bar.set_postfix(loss=f"{value:.4f}")
        if step % config.log_every == 0 or step == config.steps:
            _log(out, {"step": step, "relative_mse": value, "lr": optimizer.param_groups[0]["lr"]})
        stopping = stop_at is not None and time.monotonic() >= stop_at and step < config.steps
        if time.monotonic() - saved > config.save_every_s or step == config.steps or stopping:
            _save(last, {"model": student.module.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                         "seconds": time.monotonic() - start, "first_loss": first, "last_loss": value,
                         "config": asdict(config)})
            saved = time.monotonic()
        if stopping:
            bar.close()
            return {"step": step, "finished": False}
    bar.close()
    record = {"steps": step, "seconds": round(time.monotonic() - start, 1), "first_relative_mse": first,
              "last_relative_mse": value, "threads": torch.get_num_threads(), "torch": torch.__version__}
    return _finish(out, config, student.module, record)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0].removeprefix("``lora-sam distill``: ")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("out", type=Path, help="the run's folder (last.pt, metrics.csv, distilled.pt, distill.json)")
    parser.add_argument("--data", type=Path, required=True, help="training images (lora-sam synth's output, ...)")
    add_options(parser, DistillConfig)
    parser.add_argument("--stop-after", type=float, default=None, metavar="MINUTES",
                        help="checkpoint and stop after this many minutes (run again to go on)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    record = distill(args.out, args.data, from_args(DistillConfig, args), progress=not args.quiet,
                     stop_after_s=None if args.stop_after is None else 60.0 * args.stop_after)
    if not record.get("finished", True):
        print(f"lora-sam distill: stopped at step {record['step']}; run the same command again to go on")
        return 0
    print(f"lora-sam distill: {record['steps']} steps in {record['seconds']:.0f} s, relative MSE "
          f"{record['first_relative_mse']:.3f} -> {record['last_relative_mse']:.3f}; wrote "
          f"{Path(args.out) / record['weights']}")
    return 0
