"""SAM v1's LoRA layer presets: ``fnmatch`` patterns over the official ``Sam``'s module names."""

from __future__ import annotations

__all__ = ["LAYER_PRESETS", "SAM_LAYERS", "SAM_TARGETS", "TARGET_PRESETS"]

SAM_LAYERS: tuple[str, ...] = (
    "image_encoder.patch_embed.proj",
    "image_encoder.blocks.*.attn.qkv",
    "image_encoder.blocks.*.attn.proj",
    "image_encoder.blocks.*.mlp.lin1",
    "image_encoder.blocks.*.mlp.lin2",
    "image_encoder.neck.0",
    "image_encoder.neck.2",
    "prompt_encoder.mask_downscaling.*",
    "mask_decoder.transformer.*",
    "mask_decoder.output_upscaling.*",
)
"""The default LoRA layers: every Linear / Conv2d / ConvTranspose2d of SAM but the mask decoder's output heads
(``iou_prediction_head`` and ``output_hypernetworks_mlps``), which stay frozen."""

LAYER_PRESETS: dict[str, tuple[str, ...]] = {
    "default": SAM_LAYERS,
    "qkv": ("image_encoder.blocks.*.attn.qkv",),
    "encoder": tuple(t for t in SAM_LAYERS if t.startswith("image_encoder")),
    "decoder": ("mask_decoder.transformer.*", "mask_decoder.output_upscaling.*"),
}
"""SAM v1's presets by name (``LoRAOptions.layers``)."""

# the names before LoRA layer patterns were called "layers" (one release)
SAM_TARGETS, TARGET_PRESETS = SAM_LAYERS, LAYER_PRESETS
