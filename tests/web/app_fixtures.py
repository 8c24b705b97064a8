"""Helpers of the app tests: the training size and a LoRA adapter that changes the answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from adapter_fixtures import relabel_adapter
from lora_sam.lora import inject_lora, lora_layers
from lora_sam.lora.adapter import save_adapter
from lora_sam.models.sam_v1.model import build_sam

SIZE = (64, 96)


def make_adapter(folder: Path, checkpoint: Path, **meta: Any) -> Path:
    """A LoRA adapter on the decoder with non-zero B, so it changes the answers."""
    sam = build_sam("tiny", checkpoint, SIZE)
    inject_lora(sam, 2, 2.0, targets="decoder")
    torch.manual_seed(1)
    for layer in lora_layers(sam).values():
        torch.nn.init.normal_(layer.lora_B, std=0.05)
    path = folder / "adapter.safetensors"
    save_adapter(sam, path, targets="decoder", model_type="tiny", image_size=SIZE)
    return relabel_adapter(path, **meta)
