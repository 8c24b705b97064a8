"""SAM v1's LoRA layer presets: ``fnmatch`` patterns over the official ``Sam``'s module names (its ViT or TinyViT
image encoder's)."""

from __future__ import annotations

__all__ = ["LAYER_PRESETS", "SAM_HEADS", "SAM_LAYERS", "SAM_TARGETS", "TARGET_PRESETS", "TINY_VIT_LAYERS", "TYPE_PRESETS"]

TINY_VIT_LAYERS: tuple[str, ...] = (
    "image_encoder.patch_embed.seq.*.c",
    "image_encoder.layers.0.blocks.*.conv*.c",  # MBConv: expansion, depthwise, projection
    "image_encoder.layers.*.downsample.conv*.c",  # patch merging
    "image_encoder.layers.*.blocks.*.attn.qkv",
    "image_encoder.layers.*.blocks.*.attn.proj",
    "image_encoder.layers.*.blocks.*.local_conv.c",
    "image_encoder.layers.*.blocks.*.mlp.fc1",
    "image_encoder.layers.*.blocks.*.mlp.fc2",
)
"""The TinyViT image encoder's LoRA layers (MobileSAM, LiteMedSAM); the neck has SAM's names."""

SAM_LAYERS: tuple[str, ...] = (
    "image_encoder.patch_embed.proj",
    "image_encoder.blocks.*.attn.qkv",
    "image_encoder.blocks.*.attn.proj",
    "image_encoder.blocks.*.mlp.lin1",
    "image_encoder.blocks.*.mlp.lin2",
    "image_encoder.neck.0",
    "image_encoder.neck.2",
    *TINY_VIT_LAYERS,
    "prompt_encoder.mask_downscaling.*",
    "mask_decoder.transformer.*",
    "mask_decoder.output_upscaling.*",
)
"""The default LoRA layers: every Linear / Conv2d / ConvTranspose2d of SAM (with a ViT or a TinyViT image encoder)
but the mask decoder's output heads (``iou_prediction_head`` and ``output_hypernetworks_mlps``), which stay frozen,
and MobileSAM's unused ImageNet classifier (``image_encoder.head``)."""

LAYER_PRESETS: dict[str, tuple[str, ...]] = {
    "default": SAM_LAYERS,
    "qkv": ("image_encoder.blocks.*.attn.qkv", "image_encoder.layers.*.blocks.*.attn.qkv"),
    "encoder": tuple(t for t in SAM_LAYERS if t.startswith("image_encoder")),
    "decoder": ("mask_decoder.transformer.*", "mask_decoder.output_upscaling.*"),
}
"""SAM v1's presets by name (``LoRAOptions.layers``)."""

# the names before LoRA layer patterns were called "layers" (one release)
SAM_TARGETS, TARGET_PRESETS = SAM_LAYERS, LAYER_PRESETS

SAM_HEADS: tuple[str, ...] = ("mask_decoder.output_hypernetworks_mlps.*", "mask_decoder.iou_prediction_head.*")
"""The mask decoder's output heads: the hypernetwork MLP of each output token and the IoU head."""

TYPE_PRESETS: dict[str, dict[str, tuple[str, ...]]] = {
    # LiteMedSAM was trained with boxes and its single output only: its three multimask outputs' heads never
    # learned, and a LoRA that leaves them frozen cannot teach them (measured on real nuclei: 1-click mIoU 0.000
    # with SAM v1's default layers, benchmarks/real_nuclei.py), so its default and decoder presets train them too
    "lite_medsam": {"default": (*SAM_LAYERS, *SAM_HEADS),
                    "decoder": (*LAYER_PRESETS["decoder"], *SAM_HEADS)},
}
"""Presets of single model types, in place of the family's of the same name (``families.Family.type_presets``)."""
