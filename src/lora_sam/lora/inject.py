"""LoRA injection: which layers of a network get LoRA (``LoRAOptions``, the family's presets), wrapping them in
place, merging the updates into the base weights and back, and the LoRA tensors of a state dict."""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Iterable, Mapping, Sequence

from torch import Tensor, nn

from lora_sam.lora.layers import WRAPPERS, LoRALayer
from lora_sam.lora.options import LoRAOptions
from lora_sam.models.families import family_of

__all__ = [
    "LoRAOptions",
    "deprecated_targets",
    "inject_lora",
    "layer_presets",
    "lora_layers",
    "lora_state_dict",
    "merge_lora",
    "resolve_layers",
    "unmerge_lora",
]


def layer_presets(module: nn.Module) -> Mapping[str, tuple[str, ...]]:
    """The LoRA layer presets of ``module``'s model family and model type (``Family.presets``); none for a network
    no family owns, whose layers must then be given as ``fnmatch`` patterns."""
    try:
        family = family_of(module)
    except ValueError:
        return {}
    return family.presets(family.model_type_of(module))


def resolve_layers(layers: str | Sequence[str] | None, presets: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    """LoRA layer patterns from a preset name (of ``presets``: a model family's, ``layer_presets``), a list of
    ``fnmatch`` patterns, or None (the ``default`` preset)."""
    if layers is None:
        if "default" not in presets:
            raise ValueError("this network belongs to no model family, so it has no default LoRA layers: pass "
                             "layers= as fnmatch patterns over its module names")
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
    return next((t for t in WRAPPERS if type(module) is t), None)


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
        layers: a preset name of the network's model family (``layer_presets``: SAM v1's ``default``,
            ``qkv``, ``encoder``, ``decoder``; SAM 2.1's of the same names), ``fnmatch`` patterns over
            qualified module names (``"image_encoder.blocks.*.attn.qkv"``), or None for the family's ``default``.
        layer_types: only layers of these exact types are wrapped.
        targets: the old name of ``layers`` (deprecated, one release).
    Returns:
        The qualified names of the replaced layers, in module order.
    """
    if not isinstance(rank, int) or rank <= 0:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
    patterns = resolve_layers(deprecated_targets(layers, targets, "inject_lora"), layer_presets(module))
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
        _set_submodule(module, name, WRAPPERS[type(base)](base, rank, alpha, dropout))
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
