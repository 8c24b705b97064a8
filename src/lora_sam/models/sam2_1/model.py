"""SAM 2.1's image models from Meta's ``sam2`` package, as a model family (``lora_sam.models.families``).

Only the image path is used: the Hiera trunk and FPN neck, the two high-resolution maps (``conv_s0``,
``conv_s1``, computed once per image), the prompt encoder (a box is two corner points with labels 2
and 3, as ``SAM2ImagePredictor`` gives it) and the mask decoder with its object-score token. The memory
attention, memory encoder and object pointers are built, loaded and saved (an export keeps every key
of Meta's checkpoint) but never run or trained.

Geometry as SAM 2 has it: ``SAM2ImagePredictor`` resizes every image to a square 1024 x 1024 without
padding (the aspect ratio is not kept), and SAM 2 was trained so. A model built here at a smaller
square side (``DEFAULT_SIDE`` = 224; any multiple of 32, which Hiera's four stages and its 8 x 8 window
position table need) keeps that geometry: Hiera resizes its position embedding at run time, and the
prompt encoder's frame follows the side (``set_side``). No weight depends on the side, so a LoRA
trained at 224 px merges into the 1024 px checkpoint.

``sam2`` is an optional dependency (``pip install 'lora_sam[sam2]'``); this module imports it only
when a SAM 2 model is built, so ``lora_sam`` works without it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lora_sam.errors import MissingExtra
from lora_sam.models.attention import Recomputed
from lora_sam.models.checkpoints import load_checkpoint, resolve_checkpoint, state_mismatch
from lora_sam.models.sam2_1.config import (  # re-exported: the SAM 2.1 family's data
    DEFAULT_SIDE,
    FROZEN,
    LAYER_PRESETS,
    MINI_OVERRIDES,
    MODEL_TYPES,
    ORIGINAL_SIDE,
    PIXEL_MEAN,
    PIXEL_STD,
    SIDE_MULTIPLE,
    check_side,
    check_size,
)
from lora_sam.models.two_way import two_way_forward

__all__ = [
    "DEFAULT_SIDE", "FROZEN", "LAYER_PRESETS", "MINI_OVERRIDES", "MODEL_TYPES", "SIDE_MULTIPLE", "SideSwitch",
    "Sam2Features", "Sam2Image", "Sam2Predictor", "build_sam2_model", "check_side",
    "check_size", "is_sam2", "model_type_of", "set_compute", "set_side", "to_checkpoint",
]

def _sam2():
    """Meta's ``sam2`` package, or an error that says how to install it."""
    try:
        import sam2.automatic_mask_generator
        import sam2.build_sam
        import sam2.sam2_image_predictor
    except ImportError as err:
        raise MissingExtra(
            f"SAM 2.1 model types need Meta's sam2 package ({err}): pip install 'lora_sam[sam2]' "
            f"(set SAM2_BUILD_CUDA=0 to skip its optional CUDA extension)") from err
    return sam2


def is_sam2(module: object) -> bool:
    """Whether ``module`` is a SAM 2 network (``SAM2Base`` or a subclass), asked without importing sam2."""
    return any(c.__module__.startswith("sam2.") and c.__name__ == "SAM2Base" for c in type(module).__mro__)


def set_side(model: nn.Module, side: int) -> None:
    """Set the square frame the prompt encoder maps points, boxes and mask inputs to (and the model's own
    ``image_size``, which ``SAM2ImagePredictor`` resizes images to)."""
    side = check_side(side)
    grid = side // model.backbone_stride
    model.image_size = side
    model.sam_image_embedding_size = grid
    encoder = model.sam_prompt_encoder
    encoder.input_image_size = (side, side)
    encoder.image_embedding_size = (grid, grid)
    encoder.mask_input_size = (4 * grid, 4 * grid)


_CHECKPOINTED: dict[type, type] = {}
_FAST_TWO_WAY: dict[type, type] = {}


def _swap_class(module: nn.Module, made: dict[type, type], enabled: bool, name: str, bases: tuple[type, ...] = (),
                attrs: dict[str, object] | None = None) -> None:
    """``module`` as a subclass of its own (Meta's) class made once per class into ``made`` (``enabled``), or
    back as Meta's class."""
    plain = next(c for c in type(module).__mro__ if c not in made.values())
    if enabled:
        module.__class__ = made.setdefault(plain, type(f"{name}{plain.__name__}", (*bases, plain), attrs or {}))
    else:
        module.__class__ = plain


def set_compute(model: nn.Module, grad_checkpointing: bool, fused_attention: bool) -> None:
    """How SAM 2.1 computes (``module.ComputeOptions``): the trunk's blocks checkpointed or not; with
    ``fused_attention`` the mask decoder's two-way transformer by ``models.two_way`` (the image-side projections
    folded onto the prompt tokens; Hiera's attention is already one fused ``scaled_dot_product_attention``)."""
    _swap_class(model.sam_mask_decoder.transformer, _FAST_TWO_WAY, fused_attention, "Fast",
                attrs={"forward": two_way_forward})
    for block in model.image_encoder.trunk.blocks:
        _swap_class(block, _CHECKPOINTED, grad_checkpointing, "Checkpointed", (Recomputed,))


def _load(model: nn.Module, state: dict[str, Tensor], model_type: str, path: Path) -> None:
    details = state_mismatch(model.state_dict(), state)
    if details:
        raise ValueError(f"SAM 2 checkpoint {path} does not fit {model_type} (built from {MODEL_TYPES[model_type]}): "
                         f"{details}; pass the model type the file was trained as")
    model.load_state_dict(state, strict=True)


def build_sam2_model(
    model_type: str,
    checkpoint: str | os.PathLike | None = None,
    image_size: tuple[int, int] | int = DEFAULT_SIDE,
) -> nn.Module:
    """Meta's ``SAM2Base`` for ``model_type`` from the package's own config, in a square frame.

    Args:
        model_type: one of ``MODEL_TYPES``.
        checkpoint: Meta's ``sam2.1_hiera_*.pt`` (``{"model": state_dict}``) or a plain state dict; None
            looks where SAM v1's files are looked for (``lora_sam.models.checkpoints.resolve_checkpoint``);
            ``"random"``: random weights on purpose.
        image_size: the square side (or (side, side)), a multiple of 32; 1024 is the original model.
    Returns:
        ``sam2.modeling.sam2_base.SAM2Base`` in eval mode on the CPU, with
        ``dynamic_multimask_via_stability`` off (what is scored is what trains; see the module docstring).
    """
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown SAM 2 model type {model_type!r}; choose from {', '.join(MODEL_TYPES)}")
    side = check_side(image_size)
    path = resolve_checkpoint(model_type, checkpoint)
    state = load_checkpoint(path) if path is not None else None
    overrides = list(MINI_OVERRIDES) if model_type == "sam2.1_mini" else []
    model = _sam2().build_sam.build_sam2(MODEL_TYPES[model_type], None, device="cpu", mode="eval",
                                         hydra_overrides_extra=overrides, apply_postprocessing=False)
    if state is not None:
        _load(model, state, model_type, path)  # type: ignore[arg-type]
    set_side(model, side)
    set_compute(model, grad_checkpointing=False, fused_attention=True)
    model.lora_sam_model_type = model_type  # SAM2Base does not say which config built it
    return model.eval()


def model_type_of(model: nn.Module) -> str | None:
    """The model type ``build_sam2_model`` built ``model`` as (LoRA-wrapped or not)."""
    return getattr(model, "lora_sam_model_type", None)


def to_checkpoint(state: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """What Meta's SAM 2 checkpoint files hold: ``{"model": state_dict}`` (``build_sam2`` reads ``["model"]``)."""
    return {"model": state}


class SideSwitch:
    """Switches a model between square training frames (``lora-sam pretrain`` draws one per step); no weight
    depends on the side, so there is nothing to resize (SAM v1's ``ResolutionSwitch`` resizes its table)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def set(self, size: tuple[int, int]) -> None:
        set_side(self.model, check_side(size))

    @staticmethod
    def to_official(state: dict[str, Tensor]) -> dict[str, Tensor]:
        """The state dict as it is (on the CPU): switching changes no weight."""
        return {name: value.detach().cpu().clone() for name, value in state.items()}


@dataclass(frozen=True)
class Sam2Features:
    """One batch's image features: the embedding (B, C, h, w) with ``no_mem_embed`` added, and the two
    high-resolution maps (B, C/8, 4h, 4w) and (B, C/4, 2h, 2w) after ``conv_s0`` / ``conv_s1``.
    Indexing slices every map (``features[b : b + 1]``)."""

    embedding: Tensor
    high_res: tuple[Tensor, Tensor]

    def __getitem__(self, index: slice | int) -> Sam2Features:
        return Sam2Features(self.embedding[index], tuple(f[index] for f in self.high_res))  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.embedding)

    @property
    def device(self) -> torch.device:
        return self.embedding.device

    @property
    def shape(self) -> torch.Size:
        return self.embedding.shape

    def detach(self) -> Sam2Features:
        return Sam2Features(self.embedding.detach(), tuple(f.detach() for f in self.high_res))  # type: ignore[arg-type]

    def to(self, *args: object, **kwargs: object) -> Sam2Features:
        return Sam2Features(self.embedding.to(*args, **kwargs),  # type: ignore[arg-type]
                            tuple(f.to(*args, **kwargs) for f in self.high_res))  # type: ignore[arg-type]


def _box_points(points: Tensor | None, labels: Tensor | None, boxes: Tensor | None) -> tuple[Tensor, Tensor] | None:
    """Boxes as two corner points labelled 2 and 3, before any points (``SAM2ImagePredictor._predict``)."""
    if boxes is None:
        return None if points is None else (points.float(), labels)  # type: ignore[return-value]
    corners = boxes.float().reshape(-1, 2, 2)
    corner_labels = torch.tensor([[2, 3]], dtype=torch.int, device=boxes.device).expand(len(corners), 2)
    if points is None:
        return corners, corner_labels
    return torch.cat([corners, points.float()], 1), torch.cat([corner_labels, labels.to(torch.int)], 1)  # type: ignore[union-attr]


class Sam2Image:
    """SAM 2.1's image path as a ``promptable.PromptableModel`` over Meta's ``SAM2Base`` (a view: training it
    trains the network)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @property
    def module(self) -> nn.Module:
        return self.model

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.model.sam_prompt_encoder.input_image_size)  # type: ignore[return-value]

    @property
    def mask_threshold(self) -> float:
        return 0.0

    @property
    def low_res_size(self) -> tuple[int, int]:
        return tuple(self.model.sam_prompt_encoder.mask_input_size)  # type: ignore[return-value]

    def encode(self, images: Tensor, input_size: Tensor | None = None) -> Sam2Features:
        """(B, 3, S, S) RGB 0..255, the whole frame the image (no padding: SAM 2's square geometry)."""
        if input_size is not None and bool((input_size != torch.tensor(images.shape[-2:]).to(input_size)).any()):
            raise ValueError(
                f"SAM 2 takes square images that fill the frame ({tuple(images.shape[-2:])}), but the batch's "
                f"input_size is {input_size.tolist()}: these images were padded to keep their aspect ratio (SAM "
                f"v1's geometry); make the data with SampleOptions(frame='square') (get_loaders(frame='square'))")
        mean = images.new_tensor(PIXEL_MEAN).view(1, 3, 1, 1)
        std = images.new_tensor(PIXEL_STD).view(1, 3, 1, 1)
        out = self.model.forward_image((images - mean) / std)
        levels = out["backbone_fpn"][-self.model.num_feature_levels:]
        embedding = levels[-1]
        if self.model.directly_add_no_mem_embed:
            embedding = embedding + self.model.no_mem_embed.view(1, -1, 1, 1)
        return Sam2Features(embedding, (levels[0], levels[1]))

    # the signature of PromptableModel.decode, which this implements
    def decode(self, embedding: Sam2Features, *, points: Tensor | None = None, labels: Tensor | None = None,
               boxes: Tensor | None = None, mask_input: Tensor | None = None,
               multimask: bool = True, all_outputs: bool = False,
               object_score: bool = False) -> tuple[Tensor, ...]:
        """``PromptableModel.decode``; ``object_score``: the object-score logits (K, 1) too, as a third value."""
        model = self.model
        device = model.sam_prompt_encoder.point_embeddings[0].weight.device
        with torch.autocast(device.type, enabled=False):  # float32 prompts, as SAM v1's (model.encode_prompts)
            sparse, dense = model.sam_prompt_encoder(
                points=_box_points(points, labels, boxes), boxes=None,
                masks=mask_input.float() if mask_input is not None else None)
            dense_pe = model.sam_prompt_encoder.get_dense_pe()
        decoder = model.sam_mask_decoder
        kwargs = {"image_embeddings": embedding.embedding, "image_pe": dense_pe, "sparse_prompt_embeddings": sparse,
                  "dense_prompt_embeddings": dense, "repeat_image": True, "high_res_features": list(embedding.high_res)}
        if all_outputs:  # token 0 the single mask, 1..3 the multimask outputs, as MaskDecoder.forward slices them
            masks, iou_pred, _, objects = decoder.predict_masks(**kwargs)
        else:
            masks, iou_pred, _, objects = decoder(multimask_output=multimask, **kwargs)
        return (masks, iou_pred, objects) if object_score else (masks, iou_pred)

    def upscale(self, low_res_logits: Tensor, size: tuple[int, int]) -> Tensor:
        return F.interpolate(low_res_logits, size=tuple(size), mode="bilinear", align_corners=False)

    def mask_generator(self, **kwargs: object) -> object:
        """SAM 2's "segment everything" pipeline on this model (at 1024 px): ``SAM2AutomaticMaskGenerator``;
        ``kwargs`` go to it."""
        self.predictor()  # the same check: the original pipeline runs at 1024 px only
        return _sam2().automatic_mask_generator.SAM2AutomaticMaskGenerator(self.model, **kwargs)

    def predictor(self) -> Sam2Predictor:
        """SAM 2's original pipeline on this model (built at 1024 px): ``SAM2ImagePredictor``."""
        if self.image_size != (ORIGINAL_SIDE, ORIGINAL_SIDE):
            raise ValueError(f"SAM2ImagePredictor needs a model built at 1024x1024, got {self.image_size}; "
                             f"use families.build(model_type, checkpoint, (1024, 1024))")
        return Sam2Predictor(self.model)


class Sam2Predictor:
    """``promptable.ImagePredictor`` over Meta's ``SAM2ImagePredictor`` (the image resized to 1024 x 1024, its
    aspect ratio not kept; prompts scaled per axis)."""

    def __init__(self, model: nn.Module) -> None:
        self.sam2_predictor = _sam2().sam2_image_predictor.SAM2ImagePredictor(model.eval())
        self.device = self.sam2_predictor.device

    @property
    def input_size(self) -> tuple[int, int]:
        return (ORIGINAL_SIDE, ORIGINAL_SIDE)

    def set_image(self, image: np.ndarray) -> None:
        self.sam2_predictor.set_image(image)

    def to_frame(self, coords: Tensor, original_size: tuple[int, int]) -> Tensor:
        # SAM2Transforms.transform_coords (x / w0 * 1024), less the half pixel the prompt encoder adds back
        h0, w0 = original_size
        scale = coords.new_tensor([ORIGINAL_SIDE / w0, ORIGINAL_SIDE / h0])
        return coords * scale - 0.5

    def predict(self, points: Tensor | None, labels: Tensor | None, boxes: Tensor | None,
                mask_input: Tensor | None, multimask: bool) -> tuple[Tensor, Tensor, Tensor]:
        return self.sam2_predictor._predict(points, labels, boxes, mask_input, multimask_output=multimask)
