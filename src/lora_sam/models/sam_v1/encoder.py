"""SAM v1's image encoder at run time: one position table for every size, fused attention, checkpointing.

``ResolutionSwitch`` lets one model built at 1024 px run (and train) at any size, resizing its 64x64
position table with gradients (``lora-sam pretrain``); ``use_fused_attention`` computes the encoder's
attention without N x N maps (``lora_sam.models.attention``; on by default in ``build_sam``);
``use_checkpointing`` recomputes the blocks' activations in the backward. Each changes how the official
modules compute, never their weights or names: checkpoints load and save as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.modeling.image_encoder import Attention, Block, get_rel_pos
from torch import Tensor
from torch.nn.utils import parametrize

from lora_sam.models.attention import Recomputed, fused_attention
from lora_sam.models.checkpoints import PATCH_SIZE
from lora_sam.models.sam_v1.sizes import ORIGINAL_SIZE

__all__ = ["ResolutionSwitch", "grid_of", "resize_position_table", "use_checkpointing", "use_fused_attention",
           "use_upscaling_checkpointing"]


def resize_position_table(pos: Tensor, grid: tuple[int, int]) -> Tensor:
    """A (1, h, w, C) position table bicubically resized to ``grid`` (differentiable: ``lora-sam pretrain``
    trains one 64x64 table through it at every size; ``build_sam`` resizes a checkpoint's once)."""
    if tuple(pos.shape[1:3]) == tuple(grid):
        return pos
    resized = F.interpolate(pos.permute(0, 3, 1, 2), size=tuple(grid), mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1).contiguous()


class _FusedAttention(Attention):
    """The official attention, computed by ``attention.fused_attention``: no N x N map is stored."""

    def forward(self, x: Tensor) -> Tensor:
        return fused_attention(self, x, get_rel_pos)


class _CheckpointedUpscaling(Recomputed, torch.nn.Sequential):
    """The mask decoder's upscaling path (two transposed convs at 4x and 16x the embedding's grid, K prompts
    at once), recomputed in the backward."""


class _CheckpointedBlock(Recomputed, Block):
    """An encoder block, recomputed in the backward."""


def use_fused_attention(sam: Sam, enabled: bool = True) -> None:
    """The image encoder's attention computed without N x N maps (``enabled``, what ``build_sam`` gives) or
    by the official code; the weights and outputs are the same either way (to float tolerance)."""
    for block in sam.image_encoder.blocks:
        block.attn.__class__ = _FusedAttention if enabled else Attention


def use_checkpointing(sam: Sam, enabled: bool = True) -> None:
    """Activation checkpointing of the image encoder's blocks and of the mask decoder's upscaling path: their
    activations are recomputed in the backward instead of stored (less memory, one more forward of each)."""
    for block in sam.image_encoder.blocks:
        block.__class__ = _CheckpointedBlock if enabled else Block
    use_upscaling_checkpointing(sam, enabled)


def use_upscaling_checkpointing(sam: Sam, enabled: bool = True) -> None:
    """Activation checkpointing of the mask decoder's upscaling path alone (any image encoder)."""
    sam.mask_decoder.output_upscaling.__class__ = _CheckpointedUpscaling if enabled else torch.nn.Sequential


class _Resize(torch.nn.Module):
    """A parametrization: the (1, 64, 64, C) table resized bicubically (with gradients) to ``grid``."""

    def __init__(self) -> None:
        super().__init__()
        self.grid = (ORIGINAL_SIZE // PATCH_SIZE,) * 2

    def forward(self, table: Tensor) -> Tensor:
        return resize_position_table(table, self.grid)


class ResolutionSwitch:
    """Lets one ``Sam`` built at 1024 px run (and train) at any size: ``set(size)`` before a forward.

    The encoder keeps one 64x64 position table (``official_state_dict`` returns it so), resized with
    gradients to the size's patch grid at every forward; the prompt encoder's sizes follow ``size``.
    The attention's relative position tables are resized by the official code at run time already.
    """

    def __init__(self, sam: Sam) -> None:
        self.sam = sam
        self.resize = _Resize()
        parametrize.register_parametrization(sam.image_encoder, "pos_embed", self.resize, unsafe=True)

    def set(self, size: tuple[int, int]) -> None:
        grid = grid_of(size)
        self.resize.grid = grid
        prompt = self.sam.prompt_encoder
        prompt.input_image_size = (int(size[0]), int(size[1]))
        prompt.image_embedding_size = grid
        prompt.mask_input_size = (4 * grid[0], 4 * grid[1])

    def official_state_dict(self) -> dict[str, Tensor]:
        """The model's weights in the official layout, the position table at 64x64."""
        return self.to_official(self.sam.state_dict())

    @staticmethod
    def to_official(state: dict[str, Tensor]) -> dict[str, Tensor]:
        """A state dict of a switched model (a checkpoint's) in the official layout, on the CPU."""
        key = "image_encoder.parametrizations.pos_embed.original"
        return {"image_encoder.pos_embed" if name == key else name: value.detach().cpu().clone()
                for name, value in state.items()}


def grid_of(image_size: tuple[int, int]) -> tuple[int, int]:
    return image_size[0] // PATCH_SIZE, image_size[1] // PATCH_SIZE
