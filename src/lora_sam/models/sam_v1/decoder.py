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
- **Projections folded into the attention.** In the cross attentions between the few prompt tokens (7 to 11)
  and the 4096 image tokens, the official code projects every image token (4 linear maps of K x 4096 x 256 per
  block). Attention is linear in those projections, so they move to the few tokens' side: the token-to-image
  logits are ``(W_k^T q) . x`` and its output ``(softmax . x) W_v^T + b_v`` (a softmax row sums to 1); the
  image-to-token logits are ``x . (W_q^T k)`` and its output ``softmax . (v W_o^T)``. The same numbers with
  less than half the multiply-adds on the image side. A LoRA layer folds in as its effective weight (base +
  B A scale, with gradients to A and B); a projection of any other kind, or with LoRA dropout, runs the
  official way.
- **LayerNorm2d channels-last**: one ``layer_norm`` instead of six element-wise passes.

Measured in ``benchmarks/decoder.py`` (``BENCHMARKS.md``, "The mask decoder"). The ONNX export keeps Meta's graph
(``deploy.export_onnx`` turns this off while it traces).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder, Sam, TwoWayTransformer
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.transformer import Attention, TwoWayAttentionBlock
from torch import Tensor, nn

__all__ = ["is_fast_decoder", "use_fast_decoder"]


def _tokens(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, HW, C), contiguous."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])


def _effective(layer: nn.Module) -> tuple[Tensor, Tensor | None] | None:
    """A projection's (weight, bias) as one linear map (a wrapper says so by ``linear_map``, as
    ``lora.layers.LoRALinear`` does), or None when it is not one: then it runs as it is."""
    if type(layer) is nn.Linear:
        return layer.weight, layer.bias
    linear_map = getattr(layer, "linear_map", None)
    return linear_map() if callable(linear_map) else None


def _by_head(weight: Tensor, bias: Tensor | None, heads: int) -> tuple[Tensor, Tensor]:
    """(I, E) and (I,) -> (H, d, E) and (H, d); no bias is a zero one."""
    inner, dim = weight.shape
    bias = bias if bias is not None else weight.new_zeros(inner)
    return weight.view(heads, inner // heads, dim), bias.view(heads, inner // heads)


def _token_to_image(attn: Attention, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``attn(q=q, k=k, v=v)`` for few queries q (K, Nq, E) and many keys and values k, v (K or 1, N, E)."""
    key, value = _effective(attn.k_proj), _effective(attn.v_proj)
    if key is None or value is None:
        return attn(q=q, k=k, v=v)
    h = attn.num_heads
    wk, bk = _by_head(*key, h)
    wv, bv = _by_head(*value, h)
    query = attn.q_proj(q)  # (K, Nq, I)
    b, nq, inner = query.shape
    d = inner // h
    query = query.view(b, nq, h, d).transpose(1, 2)  # (K, H, Nq, d)
    folded = torch.einsum("bhqd,hde->bhqe", query, wk).reshape(b, h * nq, -1)  # W_k^T q: (K, H*Nq, E)
    offset = (query * bk[:, None]).sum(-1).reshape(b, h * nq, 1)  # q . b_k
    logits = torch.baddbmm(offset, folded, k.expand(b, -1, -1).transpose(1, 2)) * (1 / math.sqrt(d))
    mixed = torch.bmm(torch.softmax(logits, -1), v.expand(b, -1, -1)).view(b, h, nq, -1)  # (K, H, Nq, E)
    out = torch.einsum("bhqe,hde->bhqd", mixed, wv) + bv[:, None]
    return attn.out_proj(out.transpose(1, 2).reshape(b, nq, inner))


def _image_to_token(attn: Attention, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``attn(q=q, k=k, v=v)`` for many queries q (K, N, E) and few keys and values k, v (K, Nk, E)."""
    query, out = _effective(attn.q_proj), _effective(attn.out_proj)
    if query is None or out is None:
        return attn(q=q, k=k, v=v)
    h = attn.num_heads
    wq, bq = _by_head(*query, h)
    wo, bo = out
    keys = attn.k_proj(k)  # (K, Nk, I)
    b, nk, inner = keys.shape
    d, dim = inner // h, wo.shape[0]
    keys = keys.view(b, nk, h, d).transpose(1, 2)  # (K, H, Nk, d)
    folded = torch.einsum("bhjd,hde->bhje", keys, wq).reshape(b, h * nk, dim)  # W_q^T k: (K, H*Nk, E)
    offset = (keys * bq[:, None]).sum(-1).reshape(b, h * nk, 1)
    logits = torch.baddbmm(offset, folded, q.transpose(1, 2)) * (1 / math.sqrt(d))  # (K, H*Nk, N)
    weights = torch.softmax(logits.view(b, h, nk, -1), 2).view(b, h * nk, -1)  # over the few keys
    values = attn.v_proj(v).view(b, nk, h, d).transpose(1, 2)  # (K, H, Nk, d)
    projected = torch.einsum("bhjd,ehd->bhje", values, wo.view(dim, h, d)).reshape(b, h * nk, dim)  # v W_o^T
    result = torch.bmm(weights.transpose(1, 2), projected)  # (K, N, E)
    return result + bo if bo is not None else result


def _block(block: TwoWayAttentionBlock, queries: Tensor, keys: Tensor, query_pe: Tensor,
           key_pe: Tensor) -> tuple[Tensor, Tensor]:
    """``TwoWayAttentionBlock.forward`` with the cross attentions above (keys + key_pe computed once)."""
    if block.skip_first_layer_pe:
        queries = block.self_attn(q=queries, k=queries, v=queries)
    else:
        q = queries + query_pe
        queries = queries + block.self_attn(q=q, k=q, v=queries)
    queries = block.norm1(queries)
    k = keys + key_pe
    queries = block.norm2(queries + _token_to_image(block.cross_attn_token_to_image, queries + query_pe, k, keys))
    queries = block.norm3(queries + block.mlp(queries))
    keys = block.norm4(keys + _image_to_token(block.cross_attn_image_to_token, k, queries + query_pe, queries))
    return queries, keys


class _FastTwoWayTransformer(TwoWayTransformer):
    """``TwoWayTransformer`` on token-major image tokens (K, HW, C) (or the official (B, C, H, W))."""

    def forward(self, image_embedding: Tensor, image_pe: Tensor, point_embedding: Tensor) -> tuple[Tensor, Tensor]:
        if image_embedding.dim() == 4:
            image_embedding, image_pe = _tokens(image_embedding), _tokens(image_pe)
        queries, keys = point_embedding, image_embedding
        for layer in self.layers:
            queries, keys = _block(layer, queries, keys, point_embedding, image_pe)
        attn_out = _token_to_image(self.final_attn_token_to_image, queries + point_embedding, keys + image_pe, keys)
        return self.norm_final_attn(queries + attn_out), keys


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
        src = _tokens(image_embeddings) + _tokens(dense_prompt_embeddings)  # (K, HW, C)
        hs, src = self.transformer(src, _tokens(image_pe), tokens)
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
