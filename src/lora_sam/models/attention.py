"""Memory-efficient attention for ViT image encoders with decomposed relative positions (SAM v1's).

SAM's ``Attention`` builds the (N, N) attention map of every head, adds a materialised (N, N)
relative-position bias to it, and keeps both for the backward: at 1024 px, ViT-B's 4 global blocks hold
4096 x 4096 maps of 12 heads each (about 0.8 GB per map and block). Here the bias is folded into the
dot product instead, exactly: for a query at (h, w) and a key at (h', w'),

    scale * q.k + rel_h[q, h'] + rel_w[q, w'] = [scale * q, rel_h[q], rel_w[q]] . [k, onehot(h'), onehot(w')]

so one call of ``torch.nn.functional.scaled_dot_product_attention`` on the widened queries and keys
(head dim + H + W; the values zero-padded to the same width, which the fused kernels need) gives the
official output, and its fused kernels never store an (N, N) map. The
weights, their names and the outputs (to float tolerance) are the official ones; gradients reach
``qkv``, ``proj`` (LoRA-wrapped or not) and the relative-position tables as before.

``Recomputed`` is the other half of the low-memory options of every family: mixed into a block's class,
it recomputes the block's activations in the backward instead of keeping them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

__all__ = ["Recomputed", "fused_attention"]


class Recomputed:
    """Mixed into a module class (before it): its activations are recomputed in the backward (when training
    with gradients) instead of kept."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training and torch.is_grad_enabled():  # type: ignore[attr-defined]
            return checkpoint(super().forward, x, use_reentrant=False)  # type: ignore[misc]
        return super().forward(x)  # type: ignore[misc]


def fused_attention(attn: Any, x: Tensor, relative_table: Callable[[int, int, Tensor], Tensor]) -> Tensor:
    """SAM's ``Attention.forward`` on ``x`` (B, H, W, C), the relative positions folded into one fused
    attention call. ``attn`` is the official module (``qkv``, ``proj``, ``num_heads``, ``scale``,
    ``use_rel_pos``, ``rel_pos_h``, ``rel_pos_w``); ``relative_table(q_size, k_size, rel_pos)`` is the
    family's own lookup of the (q_size, k_size, C) relative-position table (SAM's ``get_rel_pos``)."""
    b, h, w, _ = x.shape
    heads, n = attn.num_heads, h * w
    q, k, v = attn.qkv(x).reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, N, d)
    if not attn.use_rel_pos:
        out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
    else:
        d = q.shape[-1]
        table_h = relative_table(h, h, attn.rel_pos_h).to(q.dtype)  # (H, H, d)
        table_w = relative_table(w, w, attn.rel_pos_w).to(q.dtype)  # (W, W, d)
        grid_q = q.reshape(b, heads, h, w, d)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", grid_q, table_h).reshape(b, heads, n, h)
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", grid_q, table_w).reshape(b, heads, n, w)
        rows = torch.eye(h, dtype=q.dtype, device=q.device).repeat_interleave(w, dim=0)  # key j = (j // W, j % W)
        cols = torch.eye(w, dtype=q.dtype, device=q.device).repeat(h, 1)
        keys = torch.cat([rows, cols], dim=-1).expand(b, heads, n, h + w)
        # values padded to the widened head dim: the fused kernels need one head dim for q, k and v (with
        # another, PyTorch falls back to the math path, which stores the N x N map: 9x the memory at 1024 px)
        out = F.scaled_dot_product_attention(torch.cat([q * attn.scale, rel_h, rel_w], dim=-1),
                                             torch.cat([k, keys], dim=-1), F.pad(v, (0, h + w)), scale=1.0)[..., :d]
    out = out.view(b, heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
    return attn.proj(out)
