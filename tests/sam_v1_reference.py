"""The official SAM v1 references the tests compare with: a ``tiny`` SAM built from ``segment_anything``'s own
classes, and our model's outputs at 1024 px in ``SamPredictor``'s frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from lora_sam.models.sam_v1.model import MODEL_CONFIGS, decode, encode


def official_tiny(checkpoint: Path) -> Sam:
    """The tiny configuration built directly from the official classes, as ``_build_sam`` does."""
    cfg = MODEL_CONFIGS["tiny"]
    from functools import partial

    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=cfg.encoder_depth, embed_dim=cfg.encoder_embed_dim, img_size=1024, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=cfg.encoder_num_heads,
            patch_size=16, qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=cfg.encoder_global_attn_indexes, window_size=cfg.window_size,
            out_chans=cfg.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(embed_dim=cfg.prompt_embed_dim, image_embedding_size=(64, 64),
                                     input_image_size=(1024, 1024), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=cfg.prompt_embed_dim,
                                          mlp_dim=cfg.decoder_mlp_dim, num_heads=cfg.decoder_num_heads),
            transformer_dim=cfg.prompt_embed_dim, iou_head_depth=3, iou_head_hidden_dim=cfg.iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    )
    sam.load_state_dict(torch.load(checkpoint, weights_only=True))
    return sam.eval()


def ours_at_1024(sam: Sam, predictor: SamPredictor, image: np.ndarray, **prompts) -> tuple:
    """Our differentiable path on the predictor's own resized image."""
    resized = predictor.transform.apply_image(image)
    h, w = resized.shape[:2]
    x = torch.zeros(1, 3, 1024, 1024)
    x[0, :, :h, :w] = torch.as_tensor(resized).permute(2, 0, 1).float()
    with torch.no_grad():
        emb = encode(sam, x, torch.tensor([[h, w]]))
        low, iou = decode(sam, emb, **prompts)
    masks = sam.postprocess_masks(low, (h, w), image.shape[:2]) > 0
    return low, iou, masks
