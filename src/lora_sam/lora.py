"""LoRA layers for ``nn.Linear``, ``nn.Conv2d`` and ``nn.ConvTranspose2d``, and their injection.

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

import fnmatch
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LoRALayer",
    "LoRALinear",
    "LoRAConv2d",
    "LoRAConvTranspose2d",
    "LoRAOptions",
    "SAM_LAYERS",
    "LAYER_PRESETS",
    "SAM_TARGETS",
    "TARGET_PRESETS",
    "inject_lora",
    "merge_lora",
    "unmerge_lora",
    "lora_layers",
    "lora_state_dict",
]


@dataclass(frozen=True)
class LoRAOptions:
    """Which layers get LoRA and how (``LoRASAM(lora=...)``; ``lora-sam fit --model.lora.rank 8``).

    Args:
        rank: the rank r of each update (a positive integer).
        alpha: the update is scaled by alpha / rank.
        layers: a preset (``LAYER_PRESETS``: ``default``, ``qkv``, ``encoder``, ``decoder``) or ``fnmatch``
            patterns over qualified module names (``"image_encoder.blocks.*.attn.qkv"``).
        dropout: dropout on the LoRA branch's input (0: none).
    """

    rank: int = 4
    alpha: float = 1.0
    layers: str | tuple[str, ...] = "default"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank <= 0:
            raise ValueError(f"LoRA rank must be a positive integer, got {self.rank!r}")
        if not isinstance(self.layers, str):
            object.__setattr__(self, "layers", tuple(self.layers))
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")


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


_WRAPPERS: dict[type[nn.Module], type[LoRALayer]] = {
    nn.Linear: LoRALinear,
    nn.Conv2d: LoRAConv2d,
    nn.ConvTranspose2d: LoRAConvTranspose2d,
}

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

# the names before LoRA layer patterns were called "layers" (one release)
SAM_TARGETS, TARGET_PRESETS = SAM_LAYERS, LAYER_PRESETS


def resolve_layers(layers: str | Sequence[str] | None,
                   presets: Mapping[str, tuple[str, ...]] = LAYER_PRESETS) -> tuple[str, ...]:
    """LoRA layer patterns from a preset name (of ``presets``: a model family's, SAM v1's by default), a list
    of ``fnmatch`` patterns, or None (the ``default`` preset)."""
    if layers is None:
        return tuple(presets["default"])
    if isinstance(layers, str):
        return tuple(presets.get(layers, (layers,)))
    return tuple(layers)


resolve_targets = resolve_layers  # the name before "layers" (one release)


def deprecated_targets(layers: object, targets: object, where: str) -> object:
    """``layers``, or the deprecated ``targets=`` alias of it (with a warning); both given is an error."""
    if targets is None:
        return layers
    if layers is not None:
        raise TypeError(f"{where}: pass the LoRA layer patterns as layers= only (targets= is its old name)")
    warnings.warn(f"{where}: targets= is deprecated, pass layers= (the LoRA layer patterns)",
                  DeprecationWarning, stacklevel=3)
    return targets


def _exact_type(module: nn.Module) -> type[nn.Module] | None:
    return next((t for t in _WRAPPERS if type(module) is t), None)


def _set_submodule(root: nn.Module, name: str, value: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, value)


def inject_lora(
    module: nn.Module,
    rank: int,
    alpha: float,
    layers: str | Sequence[str] | None = None,
    *,
    layer_types: Iterable[type[nn.Module]] = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d),
    dropout: float = LoRAOptions.dropout,
    targets: str | Sequence[str] | None = None,
) -> list[str]:
    """Wrap the matching layers of ``module`` in LoRA, in place, and freeze everything else.

    Args:
        layers: a preset name (``LAYER_PRESETS``), ``fnmatch`` patterns over qualified module
            names (``"image_encoder.blocks.*.attn.qkv"``), or None for ``SAM_LAYERS``.
        layer_types: only layers of these exact types are wrapped.
        targets: the old name of ``layers`` (deprecated, one release).
    Returns:
        The qualified names of the replaced layers, in module order.
    """
    if not isinstance(rank, int) or rank <= 0:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
    patterns = resolve_layers(deprecated_targets(layers, targets, "inject_lora"))
    allowed = set(layer_types)
    chosen = [
        name for name, sub in module.named_modules()
        if name and _exact_type(sub) in allowed and any(fnmatch.fnmatchcase(name, p) for p in patterns)
    ]
    if not chosen:
        raise ValueError(f"no Linear / Conv2d / ConvTranspose2d layer matches the LoRA layer patterns {list(patterns)}")
    for p in module.parameters():
        p.requires_grad_(False)
    for name in chosen:
        base = module.get_submodule(name)
        _set_submodule(module, name, _WRAPPERS[type(base)](base, rank, alpha, dropout))
    return chosen


def lora_layers(module: nn.Module) -> dict[str, LoRALayer]:
    """The LoRA wrappers inside ``module`` by qualified name."""
    return {name: sub for name, sub in module.named_modules() if isinstance(sub, LoRALayer)}


_MERGED = "_lora_merged_layers"  # attribute of a module merged by merge_lora: {name: the LoRA wrapper taken out}


def merge_lora(module: nn.Module) -> nn.Module:
    """Fold every LoRA update into its base weight and put the plain base layers back (in place).

    The module then holds plain layers only (its state dict is the base model's); the LoRA
    wrappers are remembered on it, so ``unmerge_lora`` can take the updates out again.
    """
    merged = dict(getattr(module, _MERGED, {}))
    for name, layer in lora_layers(module).items():
        layer.merge()
        _set_submodule(module, name, layer.base)
        merged[name] = layer
    object.__setattr__(module, _MERGED, merged)  # a plain attribute: not a submodule, not in the state dict
    return module


def unmerge_lora(module: nn.Module) -> nn.Module:
    """Undo ``merge_lora`` (and any layer-level ``merge()``): the base weights as they were, LoRA wrappers back."""
    for name, layer in getattr(module, _MERGED, {}).items():
        layer.unmerge()
        _set_submodule(module, name, layer)
    if hasattr(module, _MERGED):
        object.__delattr__(module, _MERGED)
    for layer in lora_layers(module).values():
        layer.unmerge()
    return module


def lora_state_dict(module: nn.Module) -> dict[str, Tensor]:
    """Only the LoRA tensors (``*.lora_A``, ``*.lora_B``) of ``module``'s state dict."""
    return {k: v for k, v in module.state_dict().items() if k.endswith(("lora_A", "lora_B"))}
