"""SAM v1's mask decoder computed faster, with the official modules, weights and numbers (to float tolerance).

On a CPU the decoder, not the encoder, dominates interactive work: each of K prompts runs the two-way transformer
over all 64 x 64 image tokens (K x 4096 x 256 floats), so the evaluation's clicks, every training round, the
automatic mask generator and ``SamPredictor`` spend their time there. ``use_fast_decoder`` (on by default in
``build_sam``, with the encoder's fused attention) changes how three official classes compute, never their
parameters or names, so checkpoints, LoRA layers, merging and exports are unaffected:

- **Token-major layout.** The official code adds the dense prompt to the repeated image embedding in (K, C, H, W)
  and transposes it to tokens (K, HW, C) as a strided view, so every later add and norm mixes layouts (2-7x slower
  on a CPU) and each repeat allocates a fresh K x 4096 x 256 block. Here the image's tokens are made contiguous
  once, the positional encoding is broadcast from one copy, and the upscaling runs channels-last.
- **Projections folded into the attention** (``models.two_way``, shared with SAM 2.1). In the cross attentions
  between the few prompt tokens (7 to 11) and the 4096 image tokens, the official code projects every image token
  (4 linear maps of K x 4096 x 256 per block); attention is linear in those projections, so they move to the few
  tokens' side: the same numbers with less than half the multiply-adds on the image side. A LoRA layer folds in as
  its effective weight (``LoRALinear.linear_map``); a projection of any other kind, or with LoRA dropout, runs the
  official way.
- **LayerNorm2d channels-last**: one ``layer_norm`` instead of six element-wise passes.

Measured in ``benchmarks/decoder.py`` (``BENCHMARKS.md``, "The mask decoder"). The ONNX export keeps Meta's graph
(``deploy.export_onnx`` turns this off while it traces).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder, Sam, TwoWayTransformer
from segment_anything.modeling.common import LayerNorm2d
from torch import Tensor

from lora_sam.models.two_way import tokens as token_major
from lora_sam.models.two_way import two_way_forward

__all__ = ["is_fast_decoder", "use_fast_decoder"]


class _FastTwoWayTransformer(TwoWayTransformer):
    """``TwoWayTransformer`` by ``two_way.two_way_forward``, on token-major image tokens (or the official layout)."""

    def forward(self, image_embedding: Tensor, image_pe: Tensor, point_embedding: Tensor) -> tuple[Tensor, Tensor]:
        return two_way_forward(self, image_embedding, image_pe, point_embedding)


class _ChannelsLastLayerNorm2d(LayerNorm2d):
    """``LayerNorm2d``; on a channels-last input one ``layer_norm`` over the channels."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            out = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
            return out.permute(0, 3, 1, 2)
        return super().forward(x)


class _FastMaskDecoder(MaskDecoder):
    """``MaskDecoder`` whose ``predict_masks`` keeps the image side token-major (one image; several: official)."""

    def predict_masks(self, image_embeddings: Tensor, image_pe: Tensor, sparse_prompt_embeddings: Tensor,
                      dense_prompt_embeddings: Tensor) -> tuple[Tensor, Tensor]:
        if image_embeddings.shape[0] != 1 or not isinstance(self.transformer, _FastTwoWayTransformer):
            return super().predict_masks(image_embeddings, image_pe, sparse_prompt_embeddings,
                                         dense_prompt_embeddings)
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(sparse_prompt_embeddings.size(0), -1, -1)
        tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)
        _, c, h, w = image_embeddings.shape
        src = token_major(image_embeddings) + token_major(dense_prompt_embeddings)  # (K, HW, C)
        hs, src = self.transformer(src, token_major(image_pe), tokens)
        b = src.shape[0]
        upscaled = self.output_upscaling(src.transpose(1, 2).view(b, c, h, w))  # channels-last throughout
        hyper_in = torch.stack([mlp(hs[:, 1 + i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], 1)
        _, c, h, w = upscaled.shape
        pixels = upscaled.permute(0, 2, 3, 1).reshape(b, h * w, c)
        masks = torch.bmm(hyper_in, pixels.transpose(1, 2)).view(b, -1, h, w)
        return masks, self.iou_prediction_head(hs[:, 0, :])


def use_fast_decoder(sam: Sam, enabled: bool = True) -> None:
    """SAM v1's mask decoder computed as the module docstring says (``enabled``) or by the official code."""
    decoder = sam.mask_decoder
    decoder.__class__ = _FastMaskDecoder if enabled else MaskDecoder
    decoder.transformer.__class__ = _FastTwoWayTransformer if enabled else TwoWayTransformer
    for module in decoder.output_upscaling:
        if isinstance(module, LayerNorm2d):
            module.__class__ = _ChannelsLastLayerNorm2d if enabled else LayerNorm2d


def is_fast_decoder(sam: Sam) -> bool:
    """Whether ``sam``'s mask decoder computes by ``use_fast_decoder``."""
    return isinstance(sam.mask_decoder, _FastMaskDecoder)
