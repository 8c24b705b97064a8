"""What a training run costs: Lightning callbacks that time each step and measure peak memory."""

from __future__ import annotations

import ctypes
import gc
import math
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, RichProgressBar, TQDMProgressBar
from pytorch_lightning.utilities.imports import _RICH_AVAILABLE

__all__ = ["KeepBest", "PeakMemory", "StepTimer", "last_epoch", "progress_bar", "quiet_framework"]

_FRAMEWORK_NOISE = (".*does not have many workers.*", ".*exists and is not empty.*", ".*weights_only.*",
                    ".*LeafSpec.*", ".*val_check_interval.*",
                    ".*module\\(s\\) in eval mode.*")  # TinyViT's batch norms: frozen statistics on purpose


def quiet_framework() -> None:
    """Lightning's info lines (accelerators, tips, 'fit stopped') and its routine warnings off; progress
    bars and errors stay. For the demo's console."""
    import logging
    import warnings

    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in _FRAMEWORK_NOISE:
        warnings.filterwarnings("ignore", pattern)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


class StepTimer(Callback):
    """Wall time of each training step, from ``on_train_batch_start`` to ``on_train_batch_end``.

    The span holds the forward, backward and optimizer step (not data loading); CUDA is
    synchronised at both ends. ``mean()`` leaves out the first ``skip`` steps (warm-up).
    """

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    @staticmethod
    def _sync(pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._sync(pl_module)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._sync(pl_module)
        self.times.append(time.perf_counter() - self._start)

    def mean(self, skip: int = 1) -> float | None:
        """Mean seconds per step after the first ``skip``; None when there are no such steps."""
        kept = self.times[skip:]
        return sum(kept) / len(kept) if kept else None


def _proc_status(field: str) -> int | None:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in bytes; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the process's peak RSS (``VmHWM``) to its current RSS (Linux >= 4.0)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap pages back first
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakMemory(Callback):
    """Peak memory of one ``fit``, read at ``on_train_end``, before Lightning moves the module back to the
    CPU, and the device the training ran on (``result["device"]``).

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors only, weights included), statistics reset
    at fit start. CPU: the process's peak resident set size (``VmHWM``), reset at fit start, so
    ``growth_bytes`` = peak - RSS at fit start approximates what training added over the weights
    (gradients, optimizer state, activations). Approximate: RSS counts pages, not tensors; the
    allocator may reuse pages freed by an earlier run, and other threads' memory counts too.
    """

    def __init__(self) -> None:
        self.result: dict[str, Any] = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        gc.collect()
        device = pl_module.device
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            self.result = {"kind": "cuda max_memory_allocated", "start_bytes": torch.cuda.memory_allocated(device)}
        else:
            reset = _reset_peak_rss()
            self.result = {"kind": "cpu peak RSS (VmHWM)" + ("" if reset else ", not reset: upper bound"),
                           "start_bytes": _proc_status("VmRSS")}
        self.result["device"] = str(device)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        device = pl_module.device
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _proc_status("VmHWM")
        start = self.result.get("start_bytes")
        self.result.update(peak_bytes=peak, growth_bytes=None if peak is None or start is None else peak - start)


def last_epoch(trainer: pl.Trainer) -> int | None:
    """The index of the run's last epoch: ``max_epochs - 1``, or what ``max_steps`` allows at the loader's
    batches per epoch, whichever ends first; None when neither bounds the run."""
    ends = []
    if trainer.max_epochs is not None and trainer.max_epochs >= 0:
        ends.append(trainer.max_epochs - 1)
    batches = trainer.num_training_batches
    if trainer.max_steps > 0 and batches not in (0, float("inf")):
        steps_per_epoch = max(1, math.ceil(batches / trainer.accumulate_grad_batches))
        ends.append(math.ceil(trainer.max_steps / steps_per_epoch) - 1)
    return min(ends) if ends else None


def _description(trainer: pl.Trainer, current_epoch: int) -> str:
    last = last_epoch(trainer)
    return f"Epoch {current_epoch}" + ("" if last is None else f"/{last}")


class _RichBar(RichProgressBar):
    def _get_train_description(self, current_epoch: int) -> str:  # Lightning's reads "Epoch 6/-2" under max_steps
        text = _description(self.trainer, current_epoch)
        return f"{text:{len(self.validation_description)}}" if len(self.validation_description) > len(text) else text


class _TQDMBar(TQDMProgressBar):
    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(_description(trainer, trainer.current_epoch))


def progress_bar() -> Callback:
    """Lightning's progress bar (rich when installed, else tqdm) naming the epoch as "Epoch 6/9", the last
    epoch counted from ``max_steps`` when that ends the run first."""
    return _RichBar() if _RICH_AVAILABLE else _TQDMBar()


class KeepBest(Callback):
    """Keep the trainable weights of the best validation (``monitor``, higher is better) and put them back
    at the end of training, before the module exports its adapter or weights. The validation at step 0 counts:
    a run that never beats its start ends where it started (a LoRA adapter of zeros) and says so."""

    def __init__(self, monitor: str = "val/miou") -> None:
        self.monitor = monitor
        self.best: float | None = None
        self.best_step: int | None = None
        self._weights: dict[str, torch.Tensor] = {}

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None or not math.isfinite(float(value)):
            return
        if self.best is None or float(value) > self.best:
            self.best, self.best_step = float(value), int(trainer.global_step)
            self._weights = {n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._weights:
            return
        with torch.no_grad():
            for name, param in pl_module.named_parameters():
                if name in self._weights:
                    param.copy_(self._weights[name])
        from pytorch_lightning.utilities import rank_zero_info

        rank_zero_info(f"lora_sam: the run ends with the weights of its best validation, step {self.best_step} "
                       f"({self.monitor} {self.best:.4f}){' (the start: no step beat it)' if self.best_step == 0 else ''}")
