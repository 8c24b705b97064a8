"""lora_sam: fine-tune Segment Anything (SAM) with LoRA adapters.

Names are imported lazily, so ``import lora_sam`` and ``lora-sam --help`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

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

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lora_sam' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"lora_sam.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
