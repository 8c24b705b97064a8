"""The model families: which module builds a model type, wraps a network as a ``PromptableModel``, and
names its LoRA layer presets.

SAM v1 (``lora_sam.models.sam_v1.model``) and SAM 2.1's image models (``lora_sam.models.sam2_1.model``, with Meta's optional
``sam2`` package) are built in. A family is one module implementing ``PromptableModel`` (and,
for its own full-resolution pipeline, ``ImagePredictor``) plus one ``register_family`` call; training
(``LoRASAM``), the evaluation, the app and the report reach every model through ``build`` and
``as_promptable``, so they run on a new family unchanged. ``build_network`` (``lora_sam.build_sam``) gives the
bare network of any model type, ``mask_generator`` a merged network's "segment everything" pipeline
(``lora-sam segment-all``), ``model_types_help`` the model types as every command's help lists them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatch
from typing import Any

from torch import Tensor, nn

from lora_sam.errors import UserError
from lora_sam.models.checkpoints import DEFAULT_IMAGE_SIZE, check_image_size
from lora_sam.models.promptable import PromptableModel
from lora_sam.models.sam2_1 import config as sam2_config
from lora_sam.models.sam2_1 import model as sam2_model
from lora_sam.models.sam_v1 import model as sam_v1
from lora_sam.models.sam_v1.presets import LAYER_PRESETS, TYPE_PRESETS
from lora_sam.settings import MODEL_TYPE

__all__ = ["Family", "as_promptable", "build", "build_network", "build_sam", "data_frame", "family_of",
           "mask_generator", "model_types", "model_types_help", "original_frame", "register_family",
           "resolve_model_type", "unfreeze"]


def _same(state: dict[str, Tensor]) -> object:
    return state


def _unknown(module: nn.Module) -> str | None:
    return None


def _meta_frame(model_type: str) -> int:
    return 1024


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
        type_sizes: default training frames of single model types that differ from ``default_image_size``.
        original_side: a model type -> the side of its own square frame (where it is deployed and merged):
            1024 px but for LiteMedSAM (256).
        type_presets: LoRA layer presets of single model types that replace the family's of the same name.
        recipe_rules: the training recipe's rules where the family's own training differs from SAM v1's
            (``training.recipe.RecipeOptions``; SAM 2.1: Meta's training config, ``sam2_1.config.META_RECIPE``).
        object_score: whether the decoder has an object-score head (``decode(..., object_score=True)``).
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
    type_sizes: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    original_side: Callable[[str], int] = _meta_frame
    type_presets: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)
    recipe_rules: Mapping[str, Any] = field(default_factory=dict)
    object_score: bool = False

    def presets(self, model_type: str | None) -> Mapping[str, tuple[str, ...]]:
        """The LoRA layer presets of ``model_type``: the family's, with the model type's own in their place."""
        return {**self.layer_presets, **self.type_presets.get(model_type or "", {})}

    def default_size(self, model_type: str | None) -> tuple[int, int]:
        """The training frame ``model_type`` takes when none is named."""
        return tuple(self.type_sizes.get(model_type or "", self.default_image_size))  # type: ignore[return-value]


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add a family (a model type already taken by another family is an error)."""
    for other in _FAMILIES.values():
        taken = set(other.model_types) & set(family.model_types)
        if other.name != family.name and taken:
            raise ValueError(f"model types {sorted(taken)} belong to the {other.name} family already")
    _FAMILIES[family.name] = family
    return family


register_family(Family("sam_v1", sam_v1.MODEL_TYPES, sam_v1.build_sam, sam_v1.SamV1, sam_v1.is_sam,
                       LAYER_PRESETS, sam_v1.set_compute, size_switch=sam_v1.ResolutionSwitch,
                       model_type_of=sam_v1.model_type_of,
                       frozen=("image_encoder.head.*", "image_encoder.norm_head.*"),  # MobileSAM's unused classifier
                       type_sizes={"lite_medsam": (256, 256)}, original_side=sam_v1.frame_of,
                       type_presets=TYPE_PRESETS))
register_family(Family("sam2.1", tuple(sam2_config.MODEL_TYPES), sam2_model.build_sam2_model, sam2_model.Sam2Image,
                       sam2_model.is_sam2, sam2_config.LAYER_PRESETS, sam2_model.set_compute,
                       (sam2_config.DEFAULT_SIDE, sam2_config.DEFAULT_SIDE), square=True,
                       check_size=sam2_config.check_size, size_switch=sam2_model.SideSwitch,
                       to_checkpoint=sam2_model.to_checkpoint, model_type_of=sam2_model.model_type_of,
                       frozen=sam2_config.FROZEN, pipeline="SAM2ImagePredictor", frame_note=sam2_config.frame_note,
                       recipe_rules=sam2_config.META_RECIPE, object_score=True))


def family_of(model_type_or_module: str | object) -> Family:
    """The family of a model type or of a network."""
    for family in _FAMILIES.values():
        if (model_type_or_module in family.model_types if isinstance(model_type_or_module, str)
                else family.owns(model_type_or_module)):
            return family
    if isinstance(model_type_or_module, str):
        raise UserError(f"unknown model type {model_type_or_module!r}: no model family builds it; choose from "
                        f"{model_types_help()}")
    raise ValueError(f"no model family for {model_type_or_module!r}; the model types are {model_types_help()}")


def model_types() -> tuple[str, ...]:
    """Every model type of every registered family, family by family."""
    return tuple(t for family in _FAMILIES.values() for t in family.model_types)


def model_types_help() -> str:
    """Every model type, family by family, as a command's help lists them: ``vit_b, ..., tiny (sam_v1);
    sam2.1_hiera_t, ..., sam2.1_mini (sam2.1)``."""
    return "; ".join(f"{', '.join(family.model_types)} ({family.name})" for family in _FAMILIES.values())


def resolve_model_type(model_type: str | None) -> str:
    """``model_type``, else $LORA_SAM_MODEL_TYPE, else ``settings.MODEL_TYPE``: what ``LoRASAM`` builds."""
    return model_type or os.environ.get("LORA_SAM_MODEL_TYPE", MODEL_TYPE)


def data_frame(model_type: str | None, image_size: tuple[int, int] | None) -> tuple[tuple[int, int], str]:
    """The training frame of ``LoRASAM(model_type=..., image_size=...)`` as the data must make it: (H, W) and
    ``SampleOptions.frame`` (``"square"`` for SAM 2.1, ``"pad"`` for SAM v1). ``lora-sam fit`` links the data's
    settings through it."""
    model_type = resolve_model_type(model_type)
    family = family_of(model_type)
    size = tuple(int(s) for s in (image_size or family.default_size(model_type)))
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


def build_network(
    model_type: str = MODEL_TYPE,
    checkpoint: str | os.PathLike | None = None,
    image_size: tuple[int, int] | int | None = None,
) -> nn.Module:
    """The network of any model type of any family, its weights loaded (``lora_sam.build_sam``).

    Args:
        model_type: a SAM v1 type (``vit_b``, ``vit_l``, ``vit_h``, ``tiny``) or a SAM 2.1 type
            (``sam2.1_hiera_t``, ``_s``, ``_b+``, ``_l``, ``sam2.1_mini``): ``model_types()``.
        checkpoint: the family's official checkpoint file; None looks in $LORA_SAM_CHECKPOINT, then
            ``~/.cache/lora_sam/<official file name>`` ($LORA_SAM_HOME) (``tiny`` and ``sam2.1_mini``: the
            built-in weights); ``"random"`` starts from random weights on purpose; ``"builtin"`` takes the weights
            shipped in the package (``tiny``, ``sam2.1_mini``).
        image_size: the training resolution (H, W), or one side; None: the family's default (SAM v1 160x256,
            SAM 2.1 224x224); (1024, 1024) is the original model.
    Returns:
        the family's own network in eval mode on the CPU: SAM v1's ``segment_anything.modeling.Sam``
        (``lora_sam.models.sam_v1.model.build_sam``), SAM 2.1's ``sam2.modeling.sam2_base.SAM2Base``
        (``lora_sam.models.sam2_1.model.build_sam2_model``). ``as_promptable`` gives its ``PromptableModel``.
    """
    family = family_of(model_type)
    size = family.default_size(model_type) if image_size is None else image_size
    return family.build(model_type, checkpoint, size)  # type: ignore[arg-type]


def original_frame(model_type: str) -> tuple[int, int]:
    """(H, W) of ``model_type``'s own square frame, where it is deployed, merged and exported: (1024, 1024) for
    SAM v1, MobileSAM and SAM 2.1, (256, 256) for LiteMedSAM."""
    side = family_of(model_type).original_side(model_type)
    return side, side


build_sam = build_network
"""``lora_sam.build_sam``: the name the package has always exported, for every family now."""


def mask_generator(network: nn.Module, **options: Any) -> Any:
    """The "segment everything" pipeline of ``network``'s family over it (merged, at 1024 px): its
    ``PromptableModel`` view's ``mask_generator`` (Meta's ``SamAutomaticMaskGenerator`` for SAM v1,
    ``SAM2AutomaticMaskGenerator`` for SAM 2.1); ``options`` go to it as they are (the ones not given keep Meta's
    defaults)."""
    view = as_promptable(network)
    if not hasattr(view, "mask_generator"):
        raise UserError(f"the {family_of(network).name} family has no automatic mask generator (its "
                        f"PromptableModel has no mask_generator), so it cannot segment everything: use a SAM v1 or "
                        f"SAM 2.1 model type")
    if any(hasattr(module, "lora_B") for module in network.modules()):
        raise ValueError("the model still has LoRA layers: fold them in first (lora_sam.merge_lora(model))")
    return view.mask_generator(**options)


def as_promptable(model: PromptableModel | nn.Module) -> PromptableModel:
    """``model`` itself if it is a ``PromptableModel``, else the view of its family over the network."""
    if isinstance(model, PromptableModel):
        return model
    return family_of(model).wrap(model)
