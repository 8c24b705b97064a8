"""LoRA layers for ``nn.Linear``, ``nn.Conv2d`` and ``nn.ConvTranspose2d``.

Each layer wraps a frozen base layer (kept as ``.base``) and adds a rank-r update
``delta = B @ A * alpha / rank`` with ``A`` random and ``B`` zero at start, so a fresh
LoRA layer computes exactly what its base computes. ``merge()`` folds the update into
the base weight and ``unmerge()`` takes it out again; neither happens implicitly.

Conv updates are factorised into two convolutions when ``groups == 1``:
``Conv2d``: A is a conv with the base's kernel, stride, padding and dilation (in -> r),
B a 1x1 conv (r -> out); ``ConvTranspose2d``: A is a 1x1 conv (in -> r), B a transposed
conv with the base's geometry (r -> out). For ``groups > 1`` the update is applied as a
grouped convolution with ``delta_weight()``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lora_sam.lora.options import LoRAOptions

__all__ = ["LoRAConv2d", "LoRAConvTranspose2d", "LoRALayer", "LoRALinear", "WRAPPERS"]


class LoRALayer(nn.Module):
    """Common part of the LoRA wrappers: rank, scaling, dropout, merge state."""

    base: nn.Module
    lora_A: nn.Parameter
    lora_B: nn.Parameter

    def __init__(self, base: nn.Module, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        if not isinstance(rank, int) or rank <= 0:
            raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
        if alpha <= 0:
            raise ValueError(f"LoRA alpha must be positive, got {alpha!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout!r}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.rank = rank
        self.alpha = float(alpha)
        self.scaling = self.alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def _new_parameter(self, *shape: int) -> nn.Parameter:
        weight = self.base.weight
        return nn.Parameter(torch.zeros(*shape, device=weight.device, dtype=weight.dtype))

    def reset_lora_parameters(self) -> None:
        """A: Kaiming-uniform (as nn.Linear's default); B: zero, so the update starts at 0."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def delta_weight(self, dtype: torch.dtype | None = None) -> Tensor:
        """The update, scaled, in the base weight's own layout; in the LoRA tensors' dtype, or ``dtype``
        (A and B cast first, so ``torch.float32`` computes a bf16 adapter's update in float32)."""
        a, b = self.lora_A, self.lora_B
        if dtype is not None:
            a, b = a.to(dtype), b.to(dtype)
        return self._delta(a, b) * self.scaling

    def _delta(self, a: Tensor, b: Tensor) -> Tensor:
        """B A in the base weight's layout, unscaled."""
        raise NotImplementedError

    def lora_forward(self, x: Tensor) -> Tensor:
        """The scaled update applied to ``x`` (the scaling is applied to the rank-r hidden tensor,
        the smallest one, rather than to the full output)."""
        raise NotImplementedError

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into ``base.weight``; the layer then runs as its base alone.

        The sum is formed in float32 and cast once to the weight's dtype. A weight held in a lower
        precision (bf16, fp16) is remembered as it was, so that ``unmerge`` restores it exactly
        rather than subtracting a rounded update from a rounded sum."""
        if not self.merged:
            weight = self.base.weight
            if weight.dtype not in (torch.float32, torch.float64):  # a buffer: .to() moves it with the layer
                self.register_buffer("_unmerged_weight", weight.detach().clone(), persistent=False)
            weight.copy_((weight.float() + self.delta_weight(torch.float32)).to(weight.dtype))
            self._merged_dtype = weight.dtype
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update back out of ``base.weight`` (exactly, for a low-precision weight).

        The LoRA tensors first follow the base weight to its device, and to its dtype when that changed
        since the merge: a model merged by ``merge_lora`` holds the base layer alone, so a ``.to()`` /
        ``.cuda()`` / ``.double()`` of the model in between moved the base weight and not the update (an
        adapter kept in float32 beside a bf16 base that did not change stays float32)."""
        if self.merged:
            weight = self.base.weight
            moved = weight.dtype != getattr(self, "_merged_dtype", weight.dtype)
            self.to(device=weight.device, dtype=weight.dtype if moved else None)
            saved = getattr(self, "_unmerged_weight", None)
            if saved is not None:
                weight.copy_(saved)
                del self._unmerged_weight
            else:
                weight.copy_((weight.float() - self.delta_weight(torch.float32)).to(weight.dtype))
            self.merged = False

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)
        if self.merged:
            return out
        return out + self.lora_forward(self.dropout(x))

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}, merged={self.merged}"


class LoRALinear(LoRALayer):
    """LoRA around ``nn.Linear``: A (r, in), B (out, r)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = LoRAOptions.dropout) -> None:
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps nn.Linear, got {type(base).__name__}")
        super().__init__(base, rank, alpha, dropout)
        self.lora_A = self._new_parameter(rank, base.in_features)
        self.lora_B = self._new_parameter(base.out_features, rank)
        self.reset_lora_parameters()

    def _delta(self, a: Tensor, b: Tensor) -> Tensor:
        return b @ a  # (out, in)

    def linear_map(self) -> tuple[Tensor, Tensor | None] | None:
        """This layer as one linear map (weight, bias), differentiable in A and B; None with dropout, which
        makes it none (``models.two_way`` folds such maps into the mask decoders' attention)."""
        if not isinstance(self.dropout, nn.Identity):
            return None
        weight = self.base.weight if self.merged else self.base.weight + self.delta_weight()
        return weight, self.base.bias

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)
        if self.merged:
            return out
        hidden = F.linear(self.dropout(x), self.lora_A) * self.scaling  # (..., r)
        # out + hidden @ B^T in one GEMM call (beta = 1) instead of a matmul and a full-size add
        flat = torch.addmm(out.reshape(-1, out.shape[-1]), hidden.reshape(-1, self.rank), self.lora_B.t())
        return flat.view(out.shape)


class LoRAConv2d(LoRALayer):
    """LoRA around ``nn.Conv2d``: A (r, in/groups, kH, kW), B (out, r)."""

    def __init__(self, base: nn.Conv2d, rank: int, alpha: float, dropout: float = LoRAOptions.dropout) -> None:
        if not isinstance(base, nn.Conv2d):
            raise TypeError(f"LoRAConv2d wraps nn.Conv2d, got {type(base).__name__}")
        if base.padding_mode != "zeros":
            raise ValueError(f"LoRAConv2d supports padding_mode='zeros' only, got {base.padding_mode!r}")
        super().__init__(base, rank, alpha, dropout)
        kh, kw = base.kernel_size
        self.lora_A = self._new_parameter(rank, base.in_channels // base.groups, kh, kw)
        self.lora_B = self._new_parameter(base.out_channels, rank)
        self.reset_lora_parameters()

    def _delta(self, a: Tensor, b: Tensor) -> Tensor:
        return torch.einsum("or,rikl->oikl", b, a)

    def lora_forward(self, x: Tensor) -> Tensor:
        conv = self.base
        if conv.groups > 1:
            return F.conv2d(x, self.delta_weight(), None, conv.stride, conv.padding, conv.dilation, conv.groups)
        hidden = F.conv2d(x, self.lora_A, None, conv.stride, conv.padding, conv.dilation)  # (B, r, h, w)
        return F.conv2d(hidden * self.scaling, self.lora_B[:, :, None, None])

    def forward(self, x: Tensor) -> Tensor:
        conv = self.base
        if self.merged or conv.groups == 1 or not isinstance(self.dropout, nn.Identity):
            return super().forward(x)
        # a grouped (depthwise) conv: one conv with the effective weight, the same sum without a second pass over
        # the input (its low-rank split would mix the groups); TinyViT's MBConv and patch merging have these
        return F.conv2d(x, conv.weight + self.delta_weight(), conv.bias, conv.stride, conv.padding, conv.dilation,
                        conv.groups)


class LoRAConvTranspose2d(LoRALayer):
    """LoRA around ``nn.ConvTranspose2d``: A (r, in), B (r, out/groups, kH, kW).

    The base weight is (in, out/groups, kH, kW) and so is ``delta_weight()``.
    """

    def __init__(self, base: nn.ConvTranspose2d, rank: int, alpha: float, dropout: float = LoRAOptions.dropout) -> None:
        if not isinstance(base, nn.ConvTranspose2d):
            raise TypeError(f"LoRAConvTranspose2d wraps nn.ConvTranspose2d, got {type(base).__name__}")
        if base.padding_mode != "zeros":
            raise ValueError("LoRAConvTranspose2d supports padding_mode='zeros' only")
        super().__init__(base, rank, alpha, dropout)
        kh, kw = base.kernel_size
        self.lora_A = self._new_parameter(rank, base.in_channels)
        self.lora_B = self._new_parameter(rank, base.out_channels // base.groups, kh, kw)
        self.reset_lora_parameters()

    def _delta(self, a: Tensor, b: Tensor) -> Tensor:
        return torch.einsum("ri,rokl->iokl", a, b)

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        out = self.base(x, output_size)
        if self.merged:
            return out
        conv = self.base
        output_padding = conv._output_padding(
            x, output_size, list(conv.stride), list(conv.padding), list(conv.kernel_size),
            2, list(conv.dilation),
        )
        x = self.dropout(x)
        if conv.groups > 1:
            weight, x_in = self.delta_weight(), x
        else:
            weight, x_in = self.lora_B, F.conv2d(x, self.lora_A[:, :, None, None]) * self.scaling  # (B, r, h, w)
        return out + F.conv_transpose2d(x_in, weight, None, conv.stride, conv.padding, output_padding,
                                        conv.groups, conv.dilation)


WRAPPERS: dict[type[nn.Module], type[LoRALayer]] = {
    nn.Linear: LoRALinear,
    nn.Conv2d: LoRAConv2d,
    nn.ConvTranspose2d: LoRAConvTranspose2d,
}

