"""``lora-sam fit``: LightningCLI over ``LoRASAM`` and ``SAMDataModule``, with YAML configs.

    lora-sam fit --config configs/vit_b_160x256_gpu.yaml
    lora-sam fit --config configs/tiny_cpu.yaml --trainer.max_steps 50
    lora-sam fit --print_config            # every option with its default
    lora-sam fit --config configs/tiny_cpu.yaml --lr auto     # Lightning's learning-rate finder first

Checkpoints: ``ModelCheckpoint(save_last=True)`` in the run's ``checkpoints/`` folder (LoRA runs
keep only the trainable tensors, a few MB), resumed with ``--ckpt_path last``. The adapter
(``adapter.safetensors``) or full weights (``model.pth``) land in the run folder at the end.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.accelerators import CUDAAccelerator
from pytorch_lightning.callbacks import ModelCheckpoint, ProgressBar, RichProgressBar, TQDMProgressBar
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_info
from torch.utils.data import DataLoader

from lora_sam.data.loaders import LoaderOptions, get_loaders
from lora_sam.data.samples import SampleOptions
from lora_sam.models.families import data_frame
from lora_sam.runs.callbacks import KeepBest, progress_bar
from lora_sam.runs.records import IterationRecords
from lora_sam.settings import as_group, to_dict
from lora_sam.training.module import LoRASAM


class SAMDataModule(pl.LightningDataModule):
    """``get_loaders`` as a LightningDataModule (for configs): its two settings groups, passed whole.

    Args:
        root: data root (SA-1B folder, .tar shards, COCO json, instance labels, or a prepared cache);
            default $LORA_SAM_DATA, then ./data.
        loader: how the data is split and batched (``data.loaders.LoaderOptions``).
        sample: how samples are made (``data.samples.SampleOptions``); ``lora-sam fit`` links its
            ``image_size`` and ``masks_per_image`` to the model's.
    """

    def __init__(self, root: str | None = None, loader: LoaderOptions = LoaderOptions(),
                 sample: SampleOptions = SampleOptions()) -> None:
        super().__init__()
        self.root, self.loader, self.sample = root, as_group(LoaderOptions, loader), as_group(SampleOptions, sample)
        self.save_hyperparameters({"root": root, "loader": to_dict(self.loader), "sample": to_dict(self.sample)})
        self._loaders: tuple[DataLoader, DataLoader | None] | None = None

    def _get(self) -> tuple[DataLoader, DataLoader | None]:
        if self._loaders is None:
            loader = self.loader
            if loader.pin_memory is None:
                loader = replace(loader, pin_memory=self._on_cuda())
            self._loaders = get_loaders(self.root, loader, self.sample)
        return self._loaders

    def _on_cuda(self) -> bool:
        """Whether the trainer runs on CUDA (pinned batches then), else whether CUDA is available."""
        if self.trainer is None:
            return torch.cuda.is_available()
        return isinstance(self.trainer.accelerator, CUDAAccelerator)

    def train_dataloader(self) -> DataLoader:
        return self._get()[0]

    def val_dataloader(self) -> DataLoader | list:
        return self._get()[1] or []


class _CLI(LightningCLI):
    def add_arguments_to_parser(self, parser: Any) -> None:
        # the data's frame follows the model's: its size (the family's default when none is named) and its
        # geometry (SAM 2.1: a square the image fills; SAM v1: resized on the longest side and padded)
        parser.link_arguments(("model.model_type", "model.image_size"), "data.sample.image_size",
                              compute_fn=lambda model_type, size: data_frame(model_type, size)[0])
        parser.link_arguments(("model.model_type", "model.image_size"), "data.sample.frame",
                              compute_fn=lambda model_type, size: data_frame(model_type, size)[1])
        parser.link_arguments("model.recipe.masks_per_image", "data.sample.masks_per_image")
        parser.add_argument("--lr", type=str | None, default=None,
                            help="'auto': run Lightning's learning-rate finder (Tuner.lr_find) on the data first, "
                                 "train with its suggestion and save its plot as lr_find.png in the run folder; "
                                 "a number: the learning rate (as --model.optim.lr)")
        parser.add_argument("--lr_find_steps", type=int, default=100, help="steps of the finder's sweep (default 100)")

    def before_fit(self) -> None:
        """Lightning's progress bar swapped for ours, which counts epochs from ``max_steps`` ("Epoch 6/9"),
        ``KeepBest`` and ``IterationRecords`` added, a validation at step 0 (the base's own numbers, the start of the val
        curves), and ``--lr``."""
        callbacks = self.trainer.callbacks
        for i, callback in enumerate(callbacks):
            if isinstance(callback, ProgressBar) and type(callback) in (RichProgressBar, TQDMProgressBar):
                callbacks[i] = progress_bar()
        callbacks.append(KeepBest())  # the run ends with the weights of its best validation (step 0 included)
        callbacks.append(IterationRecords())  # iterations.pt in the run folder, for the report's figures
        _csv_beside_tensorboard(self.trainer)
        # the curves start where the base does: one validation at step 0 (logged at step 0)
        self.trainer.validate(self.model, datamodule=self.datamodule, verbose=False)
        lr = self.config["fit"].get("lr")
        if lr == "auto":
            find_lr(self.trainer, self.model, self.datamodule, sweep_steps=self.config["fit"]["lr_find_steps"])
        elif lr is not None:
            self.model.set_lr(float(lr))


def find_lr(trainer: pl.Trainer, model: LoRASAM, datamodule: pl.LightningDataModule, *, sweep_steps: int) -> float:
    """Lightning's ``Tuner.lr_find`` over ``sweep_steps`` steps from 1e-6 to 1: sets the model's lr to its
    suggestion (the steepest fall of the smoothed loss) and saves the plot as ``lr_find.png`` in the run
    folder (the trainer's log dir). Returns the learning rate taken."""
    from pytorch_lightning.tuner import Tuner

    finder = Tuner(trainer).lr_find(model, datamodule=datamodule, num_training=sweep_steps, update_attr=False)
    if finder is None:
        raise RuntimeError("lr_find did not run (a fast_dev_run?): pass --lr with a number instead")
    suggestion = finder.suggestion()
    if suggestion is None:
        raise RuntimeError(f"lr_find found no learning rate in {sweep_steps} steps (the loss never fell): pass --lr "
                           f"with a number, or more --lr_find_steps")
    model.set_lr(float(suggestion))
    out = Path(trainer.log_dir or trainer.default_root_dir)
    out.mkdir(parents=True, exist_ok=True)
    figure = finder.plot(suggest=True)
    figure.savefig(out / "lr_find.png", dpi=100)
    rank_zero_info(f"lora_sam: lr_find suggests lr {suggestion:.3g} (plot: {out / 'lr_find.png'})")
    return float(suggestion)


def _csv_beside_tensorboard(trainer: pl.Trainer) -> None:
    """Lightning's default logger is TensorBoard's when it is installed (a dependency): add a CSV logger writing
    ``metrics.csv`` into the same version folder, which the report and the tests read."""
    loggers = trainer.loggers
    if len(loggers) == 1 and isinstance(loggers[0], TensorBoardLogger):
        board = loggers[0]
        trainer.loggers = [board, CSVLogger(board.save_dir, name=board.name, version=board.version)]


def trainer_defaults() -> dict[str, Any]:
    return {
        "callbacks": [ModelCheckpoint(save_last=True, every_n_train_steps=200, save_top_k=1,
                                      monitor="val/loss", mode="min")],
        "log_every_n_steps": 10,
    }


def run_cli(argv: list[str]) -> int:
    """Entry of ``lora-sam fit ARGS``: the arguments of ``LightningCLI``'s ``fit`` subcommand."""
    _CLI(LoRASAM, SAMDataModule, args=["fit", *argv], trainer_defaults=trainer_defaults(),
         save_config_kwargs={"overwrite": True}, parser_kwargs={"prog": "lora-sam fit"})
    return 0
