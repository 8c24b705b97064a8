"""SAM v1's model sizes: the dims of each model type, the original frame, which type a state dict holds.

Plain data (no ``segment_anything``): the builder (``lora_sam.models.sam_v1.model``), the parameter summary and anything
that only needs a model type's dims read them here.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["MODEL_CONFIGS", "ORIGINAL_SIZE", "SamConfig", "check_model_type", "detect_model_type"]

ORIGINAL_SIZE = 1024
"""The side of SAM's square frame (its predictor's; the position table is 64x64 patches of 16 px)."""


@dataclass(frozen=True)
class SamConfig:
    """The dims of one model type (``segment_anything``'s builder arguments)."""

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    window_size: int = 14
    prompt_embed_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256


MODEL_CONFIGS: dict[str, SamConfig] = {
    "vit_b": SamConfig(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamConfig(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamConfig(1280, 32, 16, (7, 15, 23, 31)),
    # Same classes, small dims: tests and CPU demos (about 2.5 M parameters).
    "tiny": SamConfig(160, 4, 5, (1, 3), window_size=7, prompt_embed_dim=64, decoder_mlp_dim=256,
                      decoder_num_heads=4, iou_head_hidden_dim=64),
}


def check_model_type(model_type: str) -> SamConfig:
    """The dims of ``model_type``; an unknown name is an error listing the known ones."""
    if model_type not in MODEL_CONFIGS:
        raise ValueError(f"unknown model_type {model_type!r}; choose from {', '.join(MODEL_CONFIGS)}")
    return MODEL_CONFIGS[model_type]


def detect_model_type(state: dict[str, Tensor]) -> str | None:
    """Which of ``MODEL_CONFIGS`` a state dict belongs to, from its encoder width and depth."""
    weight = state.get("image_encoder.patch_embed.proj.weight")
    if weight is None:
        return None
    depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    for name, cfg in MODEL_CONFIGS.items():
        if weight.shape[0] == cfg.encoder_embed_dim and depth == cfg.encoder_depth:
            return name
    return None
