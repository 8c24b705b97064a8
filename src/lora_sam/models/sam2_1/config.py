"""SAM 2.1's model types as data: Meta's configs, the small test type's overrides, the square frame, LoRA presets.

Plain data and checks (no ``sam2``): ``lora_sam.models.sam2_1.model`` builds the networks from them, and anything that
only needs a type's names or sizes reads them here.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_SIDE", "FROZEN", "LAYER_PRESETS", "META_RECIPE", "MINI_OVERRIDES", "MODEL_TYPES", "ORIGINAL_SIDE", "PIXEL_MEAN",
    "PIXEL_STD", "SAM2_LAYERS", "SIDE_MULTIPLE", "check_side", "check_size", "frame_note",
]

ORIGINAL_SIDE = 1024
"""The side of ``SAM2ImagePredictor``'s square frame."""
DEFAULT_SIDE = 224
"""The default training side: about the pixels of SAM v1's 160x256, and no window padding in Hiera-t's
stages (56, 28, 14 and 7 tokens against windows of 8, 4, 14 and 7)."""
SIDE_MULTIPLE = 32
PIXEL_MEAN = (123.675, 116.28, 103.53)  # SAM2Transforms' ImageNet mean and std, on 0..255
PIXEL_STD = (58.395, 57.12, 57.375)

_META_CONFIG = "configs/sam2.1/sam2.1_hiera_{}.yaml"
MODEL_TYPES: dict[str, str] = {
    "sam2.1_hiera_t": _META_CONFIG.format("t"),
    "sam2.1_hiera_s": _META_CONFIG.format("s"),
    "sam2.1_hiera_b+": _META_CONFIG.format("b+"),
    "sam2.1_hiera_l": _META_CONFIG.format("l"),
    "sam2.1_mini": _META_CONFIG.format("t"),
}
"""Model type -> the ``sam2`` package's own config. ``sam2.1_mini`` is Hiera-t's config with small dims
(``MINI_OVERRIDES``, about 2.2 M parameters): tests and CPU demos, as SAM v1's ``tiny``."""

MINI_OVERRIDES = (
    "++model.image_encoder.trunk.embed_dim=32",
    "++model.image_encoder.trunk.stages=[1,1,2,1]",
    "++model.image_encoder.trunk.global_att_blocks=[3]",
    "++model.image_encoder.neck.d_model=64",
    "++model.image_encoder.neck.position_encoding.num_pos_feats=64",
    "++model.image_encoder.neck.backbone_channel_list=[256,128,64,32]",
    "++model.memory_attention.d_model=64",
    "++model.memory_attention.num_layers=1",
    "++model.memory_attention.layer.d_model=64",
    "++model.memory_attention.layer.dim_feedforward=256",
    "++model.memory_attention.layer.self_attention.embedding_dim=64",
    "++model.memory_attention.layer.cross_attention.embedding_dim=64",
    "++model.memory_attention.layer.cross_attention.kv_in_dim=32",
    "++model.memory_encoder.out_dim=32",
    "++model.memory_encoder.position_encoding.num_pos_feats=32",
    "++model.memory_encoder.in_dim=64",
    "++model.memory_encoder.mask_downsampler.embed_dim=64",
    "++model.memory_encoder.fuser.layer.dim=64",
    "++model.memory_encoder.fuser.num_layers=1",
)

_ENCODER_LAYERS = (
    "image_encoder.trunk.patch_embed.proj",
    "image_encoder.trunk.blocks.*.attn.qkv",
    "image_encoder.trunk.blocks.*.attn.proj",
    "image_encoder.trunk.blocks.*.mlp.layers.*",
    "image_encoder.trunk.blocks.*.proj",
    "image_encoder.neck.convs.*.conv",
)
_DECODER_LAYERS = (
    "sam_mask_decoder.transformer.*",
    "sam_mask_decoder.output_upscaling.*",
    "sam_mask_decoder.conv_s0",
    "sam_mask_decoder.conv_s1",
    "sam_mask_decoder.pred_obj_score_head.layers.*",
)
SAM2_LAYERS = (*_ENCODER_LAYERS, "sam_prompt_encoder.mask_downscaling.*", *_DECODER_LAYERS)
"""The default LoRA layers: every Linear / Conv2d / ConvTranspose2d of the image path and the object-score head
(it trains by the object-score loss, Meta's rule; on images, every target present, that raises its score: the
``keep_object_score`` preset leaves it out), but the IoU and hypernetwork heads, which stay frozen; the memory modules are never wrapped (they do not
run on images)."""
LAYER_PRESETS: dict[str, tuple[str, ...]] = {
    "default": SAM2_LAYERS,
    # the default but the object-score head: with object_weight=0 a run keeps the base's object score (video)
    "keep_object_score": tuple(p for p in SAM2_LAYERS if "pred_obj_score_head" not in p),
    "qkv": ("image_encoder.trunk.blocks.*.attn.qkv",),
    "encoder": _ENCODER_LAYERS,
    "decoder": _DECODER_LAYERS,
}


FROZEN = (
    "memory_attention.*", "memory_encoder.*", "obj_ptr_proj.*", "obj_ptr_tpos_proj.*", "mask_downsample.*",
    "maskmem_tpos_enc", "no_mem_pos_enc", "no_obj_ptr", "no_obj_embed_spatial",
)
"""What full fine-tuning leaves as it is: the memory modules and object pointers (they never run on images).
The object-score head trains, by the object-score loss (``META_RECIPE``'s ``object_weight``)."""

META_RECIPE: dict[str, object] = {
    "iterations": 8, "pairing": "min", "box_output": "single", "box_iterations": 8, "gt_click_prob": 0.1,
    "iou_loss": "l1", "object_weight": 1.0,
}
"""SAM 2.1's recipe rules (``recipe.RecipeOptions``' rules), from Meta's training config
(``sam2/configs/sam2.1_training/sam2.1_hiera_b+_MOSE_finetune.yaml``, read by ``training.model.sam2.SAM2Train``
and ``training.loss_fns.MultiStepMultiMasksAndIous``) where it differs from SAM v1's:

- a first prompt then 7 correction clicks (``num_correction_pt_per_frame: 7``): 8 decodes, for boxes too;
- the 3 outputs only for one point (``multimask_min_pt_num: 0``, ``multimask_max_pt_num: 1``): a box is two
  points, so it trains the single output;
- the mask loss on the output of lowest loss, every IoU prediction against the target (``supervise_all_iou``):
  pairing ``min``; the IoU loss L1 (``iou_use_l1_loss``);
- a round's clicks from the target instead of the error region with probability 0.1
  (``prob_to_sample_from_gt_for_train``);
- the object score trained with weight 1 (``loss_class: 1``, focal alpha -1 and gamma 0: binary cross-entropy).

Shared with SAM v1: loss weights 20:1:1, half the first prompts points (``prob_to_use_box_input_for_train:
0.5``), box noise 0.1 of the side capped at 20 px (``sample_box_points``)."""


def check_side(image_size: tuple[int, int] | int) -> int:
    """The square side of a SAM 2 training frame; anything else is an error that says what to pass."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    if len(size) != 2 or size[0] != size[1] or size[0] <= 0 or size[0] % SIDE_MULTIPLE:
        raise ValueError(
            f"SAM 2 trains in a square frame whose side is a multiple of {SIDE_MULTIPLE} (SAM2ImagePredictor "
            f"resizes every image to 1024x1024 without keeping its aspect ratio), got image_size={image_size!r}; "
            f"for example ({DEFAULT_SIDE}, {DEFAULT_SIDE}) or (1024, 1024)")
    return size[0]


def frame_note(size: tuple[int, int]) -> str:
    """How a model sits at training size ``size``, for reports."""
    return (f"a square the image fills without keeping its aspect ratio, as SAM2ImagePredictor's 1024x1024 frame; "
            f"Hiera resizes its position embedding to {size[0] // 4}x{size[1] // 4} tokens at run time, and no tensor "
            f"depends on the size")


def check_size(image_size: tuple[int, int] | int) -> tuple[int, int]:
    """(side, side) of a valid SAM 2 training frame (``check_side``)."""
    side = check_side(image_size)
    return side, side
