"""The model families: which module builds a model type, wraps a network as a ``PromptableModel``, and
names its LoRA layer presets.

SAM v1 (``lora_sam.model``) is built in. A family is one module implementing ``PromptableModel`` (and,
for its own full-resolution pipeline, ``ImagePredictor``) plus one ``register_family`` call; training
(``LoRASAM``), the evaluation, the app and the report reach every model through ``build`` and
``as_promptable``, so they run on a new family unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from torch import nn

from lora_sam import model as sam_v1
from lora_sam.lora import LAYER_PRESETS
from lora_sam.promptable import PromptableModel

__all__ = ["Family", "as_promptable", "build", "family_of", "register_family"]


@dataclass(frozen=True)
class Family:
    """One model family.

    Args:
        name: the family's name (``sam_v1``).
        model_types: the model types it builds (``vit_b``, ...).
        build: (model_type, checkpoint, image_size) -> the network, its weights loaded.
        wrap: the network -> its ``PromptableModel`` view.
        owns: whether a network is of this family.
        layer_presets: LoRA layer presets by name (``default`` among them), ``fnmatch`` patterns.
        compute: (network, grad_checkpointing, fused_attention) -> None: how the network computes (None: the
            family has neither option; its own way).
    """

    name: str
    model_types: tuple[str, ...]
    build: Callable[[str, str | os.PathLike | None, tuple[int, int]], nn.Module]
    wrap: Callable[[nn.Module], PromptableModel]
    owns: Callable[[object], bool]
    layer_presets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    compute: Callable[[nn.Module, bool, bool], None] | None = None


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add a family (a model type already taken by another family is an error)."""
    for other in _FAMILIES.values():
        taken = set(other.model_types) & set(family.model_types)
        if other.name != family.name and taken:
            raise ValueError(f"model types {sorted(taken)} belong to the {other.name} family already")
    _FAMILIES[family.name] = family
    return family


register_family(Family("sam_v1", tuple(sam_v1.MODEL_CONFIGS), sam_v1.build_sam, sam_v1.SamV1, sam_v1.is_sam,
                       LAYER_PRESETS, sam_v1.set_compute))


def family_of(model_type_or_module: str | object) -> Family:
    """The family of a model type or of a network."""
    for family in _FAMILIES.values():
        if (model_type_or_module in family.model_types if isinstance(model_type_or_module, str)
                else family.owns(model_type_or_module)):
            return family
    known = ", ".join(t for f in _FAMILIES.values() for t in f.model_types)
    raise ValueError(f"no model family for {model_type_or_module!r}; the model types are {known}")


def build(model_type: str, checkpoint: str | os.PathLike | None, image_size: tuple[int, int]) -> PromptableModel:
    """``model_type`` at ``image_size`` from ``checkpoint``, as its family's ``PromptableModel``."""
    family = family_of(model_type)
    return family.wrap(family.build(model_type, checkpoint, image_size))


def as_promptable(model: PromptableModel | nn.Module) -> PromptableModel:
    """``model`` itself if it is a ``PromptableModel``, else the view of its family over the network."""
    if isinstance(model, PromptableModel):
        return model
    return family_of(model).wrap(model)
