"""lora_sam: fine-tune Segment Anything (SAM) with LoRA adapters.

Names are imported lazily, so ``import lora_sam`` and ``lora-sam --help`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "LoRALinear": "lora",
    "LoRAConv2d": "lora",
    "LoRAConvTranspose2d": "lora",
    "inject_lora": "lora",
    "merge_lora": "lora",
    "unmerge_lora": "lora",
    "lora_state_dict": "lora",
    "parameter_summary": "summary",
    "save_adapter": "adapter",
    "load_adapter": "adapter",
    "apply_adapter": "adapter",
    "build_sam": "model",
    "export_merged": "adapter",
    "point_sample": "targets",
    "box_sample": "targets",
    "get_loaders": "data.loaders",
    "LoRASAM": "module",
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
    from lora_sam.adapter import apply_adapter, export_merged, load_adapter, save_adapter
    from lora_sam.data.loaders import get_loaders
    from lora_sam.lora import (
        LoRAConv2d,
        LoRAConvTranspose2d,
        LoRALinear,
        inject_lora,
        lora_state_dict,
        merge_lora,
        unmerge_lora,
    )
    from lora_sam.model import build_sam
    from lora_sam.module import LoRASAM
    from lora_sam.summary import parameter_summary
    from lora_sam.targets import box_sample, point_sample


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lora_sam' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"lora_sam.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
