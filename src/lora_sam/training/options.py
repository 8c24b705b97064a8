"""The option groups of ``LoRASAM`` besides LoRA's and the recipe's: how it optimises (``OptimOptions``) and how
a step is computed (``ComputeOptions``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = ["ComputeOptions", "OptimOptions"]


@dataclass(frozen=True)
class OptimOptions:
    """AdamW with a linear warm-up, then a constant learning rate or a cosine decay (``LoRASAM(optim=...)``).

    Args:
        lr: the learning rate. None: the base's default (``checkpoints.fine_tune_defaults``).
        weight_decay: AdamW's decoupled weight decay.
        warmup_steps: steps of the linear warm-up. None: the base's default.
        final_lr_fraction: None: the learning rate stays constant after the warm-up; a number: it decays
            on a cosine to this fraction of ``lr`` at the run's last step (the Trainer's ``max_steps``).
    """

    lr: float | None = None
    weight_decay: float = 0.01
    warmup_steps: int | None = None
    final_lr_fraction: float | None = None

    def __post_init__(self) -> None:
        if self.lr is not None and not self.lr >= 0:
            raise ValueError(f"lr must be >= 0, got {self.lr!r}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps!r}")
        if self.final_lr_fraction is not None and not 0 <= self.final_lr_fraction <= 1:
            raise ValueError(f"final_lr_fraction must be in [0, 1], got {self.final_lr_fraction!r}")

    def factor(self, step: int, total: int) -> float:
        """The learning rate of ``step`` (0-based) as a fraction of ``lr``, in a run of ``total`` steps."""
        warmup = max(int(self.warmup_steps or 0), 0)
        if step < warmup:
            return (step + 1) / warmup
        if self.final_lr_fraction is None:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return self.final_lr_fraction + (1 - self.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class ComputeOptions:
    """How a training step is computed (``LoRASAM(compute=...)``); the numbers do not depend on it (to float
    tolerance), its time and memory do.

    Args:
        grad_checkpointing: recompute the image encoder blocks' activations in the backward instead of keeping
            them: the low-memory setting (ViT-B LoRA at 1024 px in about half the peak memory, for one more
            encoder forward per step).
        fused_attention: the encoder's attention without N x N maps (``lora_sam.models.attention``); False: the
            official code.
        on_nonfinite: ``"error"`` stops with the step named; ``"skip"`` skips that batch.
        compile_decoder: the static-K decoder side (``decoder_side.StaticKDecoder``: prompts padded to
            ``masks_per_image``) compiled by ``torch.compile``, each kind of round once. Off by default: slower on
            a 2-core CPU (BENCHMARKS.md, "The static-K compiled decoder side").
    """

    grad_checkpointing: bool = False
    fused_attention: bool = True
    compile_decoder: bool = False
    on_nonfinite: Literal["error", "skip"] = "error"

    def __post_init__(self) -> None:
        if self.on_nonfinite not in ("error", "skip"):
            raise ValueError(f"on_nonfinite must be 'error' or 'skip', got {self.on_nonfinite!r}")
