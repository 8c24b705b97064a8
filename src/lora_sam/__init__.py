"""lora_sam: fine-tune Segment Anything (SAM) with LoRA adapters.

The package by concept: ``models`` (the model seam and one sub-package per family: ``sam_v1``, ``sam2_1``),
``lora`` (layers, injection, adapter files), ``training`` (targets, prompts, losses, the recipe, ``LoRASAM``),
``data``, ``evaluation``, ``report``, ``runs`` (the commands), ``app``. The public names below are imported
lazily, so ``import lora_sam`` and ``lora-sam --help`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lora_sam import _moved

__version__ = "0.1.0"

_EXPORTS = {
    "LoRALinear": "lora.layers",
    "LoRAConv2d": "lora.layers",
    "LoRAConvTranspose2d": "lora.layers",
    "inject_lora": "lora.inject",
    "merge_lora": "lora.inject",
    "unmerge_lora": "lora.inject",
    "lora_state_dict": "lora.inject",
    "parameter_summary": "lora.summary",
    "save_adapter": "lora.adapter",
    "load_adapter": "lora.adapter",
    "apply_adapter": "lora.adapter",
    "export_merged": "lora.adapter",
    "build_sam": "models.families",  # every family's network (families.build_network)
    "point_sample": "training.targets",
    "box_sample": "training.targets",
    "get_loaders": "data.loaders",
    "LoRASAM": "training.module",
}

__all__ = [
    "LoRAConv2d",
    "LoRAConvTranspose2d",
    "LoRALinear",
    "LoRASAM",
    "apply_adapter",
    "box_sample",
    "build_sam",
    "export_merged",
    "get_loaders",
    "inject_lora",
    "load_adapter",
    "lora_state_dict",
    "merge_lora",
    "parameter_summary",
    "point_sample",
    "save_adapter",
    "unmerge_lora",
]  # the keys of _EXPORTS, written out for static tools

if TYPE_CHECKING:  # the same names, visible to type checkers and IDEs; at run time __getattr__ imports them
    from lora_sam.data.loaders import get_loaders
    from lora_sam.lora.adapter import apply_adapter, export_merged, load_adapter, save_adapter
    from lora_sam.lora.inject import inject_lora, lora_state_dict, merge_lora, unmerge_lora
    from lora_sam.lora.layers import LoRAConv2d, LoRAConvTranspose2d, LoRALinear
    from lora_sam.lora.summary import parameter_summary
    from lora_sam.models.families import build_sam
    from lora_sam.training.module import LoRASAM
    from lora_sam.training.targets import box_sample, point_sample

_moved.install()  # the module paths before the layout by concept (lora_sam.recipe, ...) still import


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lora_sam' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"lora_sam.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
