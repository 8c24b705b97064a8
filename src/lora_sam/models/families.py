"""The model families: which module builds a model type, wraps a network as a ``PromptableModel``, and
names its LoRA layer presets.

SAM v1 (``lora_sam.models.sam_v1.model``) and SAM 2.1's image models (``lora_sam.models.sam2_1.model``, with Meta's optional
``sam2`` package) are built in. A family is one module implementing ``PromptableModel`` (and,
for its own full-resolution pipeline, ``ImagePredictor``) plus one ``register_family`` call; training
(``LoRASAM``), the evaluation, the app and the report reach every model through ``build`` and
``as_promptable``, so they run on a new family unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatch
from typing import Any

from torch import Tensor, nn

from lora_sam.models.checkpoints import DEFAULT_IMAGE_SIZE, check_image_size
from lora_sam.models.promptable import PromptableModel
from lora_sam.models.sam2_1 import config as sam2_config
from lora_sam.models.sam2_1 import model as sam2_model
from lora_sam.models.sam_v1 import model as sam_v1
from lora_sam.models.sam_v1.presets import LAYER_PRESETS
from lora_sam.settings import MODEL_TYPE

__all__ = ["Family", "as_promptable", "build", "data_frame", "family_of", "model_types", "register_family",
           "resolve_model_type", "unfreeze"]


def _same(state: dict[str, Tensor]) -> object:
    return state


def _unknown(module: nn.Module) -> str | None:
    return None


def _v1_frame(size: tuple[int, int]) -> str:
    return (f"the position embedding is interpolated to {size[0] // 16}x{size[1] // 16}; every other tensor has its "
            f"1024 px shape")


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
        default_image_size: the training frame a model type of this family takes when none is named.
        square: whether the family's frame is a square the image fills without keeping its aspect ratio
            (SAM 2); else the image is resized on its longest side and padded (SAM v1). The data must match.
        check_size: a training size -> (H, W), or an error saying which sizes the family takes.
        size_switch: the network -> an object whose ``set((H, W))`` makes it run at that size from then on
            (``lora-sam pretrain`` draws a size per step); ``to_official(state)`` on its class gives the
            official layout of a switched network's state dict.
        to_checkpoint: a state dict -> what the family's official checkpoint files hold.
        model_type_of: the network -> its model type (None: unknown).
        frozen: ``fnmatch`` patterns of parameters full fine-tuning leaves frozen (parts that do not run on
            images, or whose output no loss reaches).
        pipeline: the name of the family's own 1024 px pipeline (``ImagePredictor``), as reports name it.
        frame_note: (H, W) -> how a model of the family sits at that training size, a phrase for reports.
    """

    name: str
    model_types: tuple[str, ...]
    build: Callable[[str, str | os.PathLike | None, tuple[int, int]], nn.Module]
    wrap: Callable[[nn.Module], PromptableModel]
    owns: Callable[[object], bool]
    layer_presets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    compute: Callable[[nn.Module, bool, bool], None] | None = None
    default_image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE
    square: bool = False
    check_size: Callable[[tuple[int, int] | int], tuple[int, int]] = check_image_size
    size_switch: Callable[[nn.Module], Any] | None = None
    to_checkpoint: Callable[[dict[str, Tensor]], object] = _same
    model_type_of: Callable[[nn.Module], str | None] = _unknown
    frozen: tuple[str, ...] = ()
    pipeline: str = "SamPredictor"
    frame_note: Callable[[tuple[int, int]], str] = _v1_frame


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
                       LAYER_PRESETS, sam_v1.set_compute, size_switch=sam_v1.ResolutionSwitch,
                       model_type_of=sam_v1.model_type_of))
register_family(Family("sam2.1", tuple(sam2_config.MODEL_TYPES), sam2_model.build_sam2_model, sam2_model.Sam2Image,
                       sam2_model.is_sam2, sam2_config.LAYER_PRESETS, sam2_model.set_compute,
                       (sam2_config.DEFAULT_SIDE, sam2_config.DEFAULT_SIDE), square=True,
                       check_size=sam2_config.check_size, size_switch=sam2_model.SideSwitch,
                       to_checkpoint=sam2_model.to_checkpoint, model_type_of=sam2_model.model_type_of,
                       frozen=sam2_config.FROZEN, pipeline="SAM2ImagePredictor", frame_note=sam2_config.frame_note))


def family_of(model_type_or_module: str | object) -> Family:
    """The family of a model type or of a network."""
    for family in _FAMILIES.values():
        if (model_type_or_module in family.model_types if isinstance(model_type_or_module, str)
                else family.owns(model_type_or_module)):
            return family
    known = ", ".join(model_types())
    raise ValueError(f"no model family for {model_type_or_module!r}; the model types are {known}")


def model_types() -> tuple[str, ...]:
    """Every model type of every registered family, family by family."""
    return tuple(t for family in _FAMILIES.values() for t in family.model_types)


def resolve_model_type(model_type: str | None) -> str:
    """``model_type``, else $LORA_SAM_MODEL_TYPE, else ``settings.MODEL_TYPE``: what ``LoRASAM`` builds."""
    return model_type or os.environ.get("LORA_SAM_MODEL_TYPE", MODEL_TYPE)


def data_frame(model_type: str | None, image_size: tuple[int, int] | None) -> tuple[tuple[int, int], str]:
    """The training frame of ``LoRASAM(model_type=..., image_size=...)`` as the data must make it: (H, W) and
    ``SampleOptions.frame`` (``"square"`` for SAM 2.1, ``"pad"`` for SAM v1). ``lora-sam fit`` links the data's
    settings through it."""
    family = family_of(resolve_model_type(model_type))
    size = tuple(int(s) for s in (image_size or family.default_image_size))
    return size, "square" if family.square else "pad"  # type: ignore[return-value]


def unfreeze(module: nn.Module) -> list[str]:
    """Full fine-tuning: every parameter of the network trains but its family's ``frozen`` ones; returns those."""
    frozen = family_of(module).frozen
    module.requires_grad_(True)
    held = [name for name, p in module.named_parameters() if any(fnmatch(name, pattern) for pattern in frozen)]
    for name in held:
        module.get_parameter(name).requires_grad_(False)
    return held


def build(model_type: str, checkpoint: str | os.PathLike | None, image_size: tuple[int, int]) -> PromptableModel:
    """``model_type`` at ``image_size`` from ``checkpoint``, as its family's ``PromptableModel``."""
    family = family_of(model_type)
    return family.wrap(family.build(model_type, checkpoint, image_size))


def as_promptable(model: PromptableModel | nn.Module) -> PromptableModel:
    """``model`` itself if it is a ``PromptableModel``, else the view of its family over the network."""
    if isinstance(model, PromptableModel):
        return model
    return family_of(model).wrap(model)
