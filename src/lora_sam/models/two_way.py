"""SAM's two-way transformer (the mask decoder of both families) computed with fewer multiply-adds, same numbers.

Both SAM v1's and SAM 2.1's mask decoders run a two-way transformer between the few prompt tokens (7 to 11) and all
image tokens (4096 at 1024 px), once per prompt. The functions here compute its blocks from the official modules
(their weights, LoRA wrappers included) in a cheaper order; each family swaps them into its own classes
(``sam_v1.decoder``, ``sam2_1.model``):

- the image tokens token-major and contiguous (``tokens``), the positional encoding broadcast from one copy;
- in the cross attentions the projections of the many image tokens move onto the few prompt tokens, since attention
  is linear in them: token-to-image logits ``(W_k^T q) . x`` and output ``(softmax . x) W_v^T + b_v`` (a softmax
  row sums to 1); image-to-token logits ``x . (W_q^T k)`` and output ``softmax . (v W_o^T)``. Less than half the
  multiply-adds on the image side. A projection folds in as one linear map: ``nn.Linear``, or a wrapper that says
  which map it is (``linear_map()``: ``lora.layers.LoRALinear``, its effective weight with gradients to A and B);
  anything else, and attention dropout in training, runs the official way.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["image_to_token", "token_to_image", "tokens", "two_way_block", "two_way_forward"]


def tokens(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, HW, C), contiguous."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])


def _effective(layer: nn.Module) -> tuple[Tensor, Tensor | None] | None:
    """A projection's (weight, bias) as one linear map (a wrapper says so by ``linear_map``, as
    ``lora.layers.LoRALinear`` does), or None when it is not one: then it runs as it is."""
    if type(layer) is nn.Linear:
        return layer.weight, layer.bias
    linear_map = getattr(layer, "linear_map", None)
    return linear_map() if callable(linear_map) else None


def _folds(attn: nn.Module, first: nn.Module, second: nn.Module) -> tuple[tuple, tuple] | None:
    """The two projections as linear maps, or None: then the attention runs as it is (also with dropout on)."""
    if attn.training and getattr(attn, "dropout_p", 0.0) > 0:  # SAM 2.1's attention dropout in training
        return None
    maps = _effective(first), _effective(second)
    return None if maps[0] is None or maps[1] is None else maps  # type: ignore[return-value]


def _folded_logits(projected: Tensor, other: tuple[Tensor, Tensor | None], heads: int, x: Tensor) -> Tensor:
    """The attention logits between the few tokens' projection ``projected`` (K, n, I) and the many tokens ``x``
    (K or 1, N, E), the many tokens' projection ``other`` (weight (I, E), bias) folded onto the few:
    ``(W^T p) . x + p . b`` per head, scaled; (K, H*n, N), heads outer."""
    b, n, inner = projected.shape
    d = inner // heads
    weight, bias = other
    bias = bias if bias is not None else weight.new_zeros(inner)
    split = projected.view(b, n, heads, d).transpose(1, 2)  # (K, H, n, d)
    folded = torch.einsum("bhnd,hde->bhne", split, weight.view(heads, d, -1)).reshape(b, heads * n, -1)
    offset = (split * bias.view(heads, d)[:, None]).sum(-1).reshape(b, heads * n, 1)
    return torch.baddbmm(offset, folded, x.expand(b, -1, -1).transpose(1, 2)) * (1 / math.sqrt(d))


def token_to_image(attn: nn.Module, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``attn(q=q, k=k, v=v)`` for few queries q (K, Nq, E) and many keys and values k, v (K or 1, N, E)."""
    maps = _folds(attn, attn.k_proj, attn.v_proj)
    if maps is None:
        return attn(q=q, k=k, v=v)
    key, (wv, bv) = maps
    h = attn.num_heads
    query = attn.q_proj(q)  # (K, Nq, I)
    b, nq, inner = query.shape
    logits = _folded_logits(query, key, h, k)  # (K, H*Nq, N)
    mixed = torch.bmm(torch.softmax(logits, -1), v.expand(b, -1, -1)).view(b, h, nq, -1)  # (K, H, Nq, E)
    out = torch.einsum("bhqe,hde->bhqd", mixed, wv.view(h, inner // h, -1))  # (softmax . x) W_v^T
    out = out.transpose(1, 2).reshape(b, nq, inner)
    return attn.out_proj(out + bv if bv is not None else out)  # + b_v: a softmax row sums to 1


def image_to_token(attn: nn.Module, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``attn(q=q, k=k, v=v)`` for many queries q (K, N, E) and few keys and values k, v (K, Nk, E)."""
    maps = _folds(attn, attn.q_proj, attn.out_proj)
    if maps is None:
        return attn(q=q, k=k, v=v)
    query, (wo, bo) = maps
    h = attn.num_heads
    keys = attn.k_proj(k)  # (K, Nk, I)
    b, nk, inner = keys.shape
    d, dim = inner // h, wo.shape[0]
    logits = _folded_logits(keys, query, h, q)  # (K, H*Nk, N)
    weights = torch.softmax(logits.view(b, h, nk, -1), 2).view(b, h * nk, -1)  # over the few keys
    values = attn.v_proj(v).view(b, nk, h, d).transpose(1, 2)  # (K, H, Nk, d)
    projected = torch.einsum("bhjd,ehd->bhje", values, wo.view(dim, h, d)).reshape(b, h * nk, dim)  # v W_o^T
    result = torch.bmm(weights.transpose(1, 2), projected)  # (K, N, E)
    return result + bo if bo is not None else result


def two_way_block(block: nn.Module, queries: Tensor, keys: Tensor, query_pe: Tensor,
                  key_pe: Tensor) -> tuple[Tensor, Tensor]:
    """``TwoWayAttentionBlock.forward`` with the cross attentions above (keys + key_pe computed once)."""
    if block.skip_first_layer_pe:
        queries = block.self_attn(q=queries, k=queries, v=queries)
    else:
        q = queries + query_pe
        queries = queries + block.self_attn(q=q, k=q, v=queries)
    queries = block.norm1(queries)
    k = keys + key_pe
    queries = block.norm2(queries + token_to_image(block.cross_attn_token_to_image, queries + query_pe, k, keys))
    queries = block.norm3(queries + block.mlp(queries))
    keys = block.norm4(keys + image_to_token(block.cross_attn_image_to_token, k, queries + query_pe, queries))
    return queries, keys


def two_way_forward(transformer: nn.Module, image_embedding: Tensor, image_pe: Tensor,
                    point_embedding: Tensor) -> tuple[Tensor, Tensor]:
    """``TwoWayTransformer.forward`` computed as above: image tokens (B, C, H, W), or token-major (B, HW, C); the
    positional encoding (1 or B, ...) alike. Returns the prompt tokens and the image tokens (B, HW, C)."""
    if image_embedding.dim() == 4:
        image_embedding, image_pe = tokens(image_embedding), tokens(image_pe)
    queries, keys = point_embedding, image_embedding
    for layer in transformer.layers:
        queries, keys = two_way_block(layer, queries, keys, point_embedding, image_pe)
    attn_out = token_to_image(transformer.final_attn_token_to_image, queries + point_embedding, keys + image_pe, keys)
    return transformer.norm_final_attn(queries + attn_out), keys
