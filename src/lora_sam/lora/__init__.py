"""LoRA for SAM: the layers (``layers``), their injection into a network and merging (``inject``), adapter
files and the merged export (``adapter``), and parameter counts (``summary``).

``from lora_sam.lora import LoRAOptions, inject_lora, ...`` takes the names of ``layers`` and ``inject``;
``adapter`` and ``summary`` are imported as modules.
"""

from __future__ import annotations

from lora_sam.lora.inject import (
    deprecated_targets,
    inject_lora,
    layer_presets,
    lora_layers,
    lora_state_dict,
    merge_lora,
    resolve_layers,
    unmerge_lora,
)
from lora_sam.lora.layers import LoRAConv2d, LoRAConvTranspose2d, LoRALayer, LoRALinear
from lora_sam.lora.options import LoRAOptions
from lora_sam.models.sam_v1.presets import LAYER_PRESETS, SAM_LAYERS, SAM_TARGETS, TARGET_PRESETS

__all__ = [
    "LAYER_PRESETS",
    "SAM_LAYERS",
    "SAM_TARGETS",
    "TARGET_PRESETS",
    "LoRAConv2d",
    "LoRAConvTranspose2d",
    "LoRALayer",
    "LoRALinear",
    "LoRAOptions",
    "deprecated_targets",
    "inject_lora",
    "layer_presets",
    "lora_layers",
    "lora_state_dict",
    "merge_lora",
    "resolve_layers",
    "unmerge_lora",
]  # LAYER_PRESETS / SAM_LAYERS (and their old names): SAM v1's presets, kept here for code written before families
