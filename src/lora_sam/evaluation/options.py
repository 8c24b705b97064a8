"""The evaluation's settings: which models (``EvalModels``) and how they are scored (``EvalOptions``).

``lora-sam eval``'s options are made from these fields (``lora_sam.settings.add_options``);
``lora-sam compare`` and the demo pass them whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lora_sam.models.families import data_frame, model_types_help
from lora_sam.settings import MAX_CLICKS, MODEL_TYPE, VAL_FRACTION

__all__ = ["EVAL_DEFAULTS", "EvalModels", "EvalOptions", "Refine"]

Refine = Literal["single", "multi"]


@dataclass(frozen=True)
class EvalOptions:
    """How the models are scored: the same images, targets and simulated clicks for every model.

    Args:
        split: the val split of get_loaders (the training run's split) or every image (all).
        val_fraction: the val share, as in training.
        max_images: evaluate the first N images (None: all).
        masks_per_image: at most K target masks per image, drawn from the seed (None: every mask).
        max_clicks: clicks per target.
        refine: the output after the first click: SAM's single-mask output (single, as the training
            recipe and SamPredictor use it) or the highest predicted IoU of 3 (multi).
        box_output: the output for the GT box: the highest predicted IoU of 3 (multi, as the training
            recipe) or the single-mask output (single).
        seed: seed of the target choice (and of the val split).
        automatic: also score each model's automatic masks ("segment everything", at 1024 px: the base,
            every adapter merged, every full model) by proposal recall against every GT mask: AR@100 and
            AR@1000 over IoU 0.5:0.95, as SAM's paper scores object proposals.
        automatic_points: the automatic masks' point grid per side (SAM's default is 32: 1024 prompts).
        automatic_images: score the automatic masks on the first N images only (None: all).
    """

    split: Literal["val", "all"] = "val"
    val_fraction: float = VAL_FRACTION
    max_images: int | None = None
    masks_per_image: int | None = None
    max_clicks: int = MAX_CLICKS
    refine: Refine = "single"
    box_output: Refine = "multi"
    seed: int = 0
    automatic: bool = False
    automatic_points: int = 16
    automatic_images: int | None = None

    def __post_init__(self) -> None:
        if self.split not in ("val", "all"):
            raise ValueError(f"split must be 'val' or 'all', got {self.split!r}")
        if self.max_clicks < 1:
            raise ValueError(f"max_clicks must be >= 1, got {self.max_clicks}")
        for name in ("refine", "box_output"):
            if getattr(self, name) not in ("single", "multi"):
                raise ValueError(f"{name} must be 'single' or 'multi', got {getattr(self, name)!r}")


EVAL_DEFAULTS = EvalOptions()
"""The defaults, for the protocol's functions (each default is written once, above)."""


@dataclass(frozen=True)
class EvalModels:
    """Which models are evaluated: the base and what was trained from it.

    Args:
        model_type: the base's model type, of either family.
        checkpoint: the base SAM checkpoint (official format).
        image_size: the training resolution (H, W); None: the family's default (SAM v1 160x256, SAM 2.1
            224x224). The data is made in the family's frame (``frame``: padded, or a square for SAM 2.1).
        adapters: LoRA adapters (.safetensors) on the base, each a row.
        fulls: fully fine-tuned model.pth files at the training resolution, each a row.
        base: evaluate the base at the training resolution.
        original: add the original SAM pipeline (SamPredictor at 1024 px) on the base, and every
            adapter merged and every full model at 1024 px (as deployed).
    """

    model_type: str = field(default=MODEL_TYPE, metadata={"listing": model_types_help})
    checkpoint: str | None = None
    image_size: tuple[int, int] | None = None
    adapters: tuple[str, ...] = field(default=(), metadata={"flag": "adapter", "append": True, "metavar": "A"})
    fulls: tuple[str, ...] = field(default=(), metadata={"flag": "full", "append": True, "metavar": "F"})
    base: bool = True
    original: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", data_frame(self.model_type, self.image_size)[0])
        object.__setattr__(self, "adapters", tuple(str(p) for p in self.adapters))
        object.__setattr__(self, "fulls", tuple(str(p) for p in self.fulls))
        if self.checkpoint is not None:
            object.__setattr__(self, "checkpoint", str(self.checkpoint))

    @property
    def frame(self) -> str:
        """How the data enters the training frame (``SampleOptions.frame``): the model family's."""
        return data_frame(self.model_type, self.image_size)[1]
