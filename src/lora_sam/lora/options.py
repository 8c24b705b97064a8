"""``LoRAOptions``: which layers of a network get LoRA, and how (one settings group)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LoRAOptions"]


@dataclass(frozen=True)
class LoRAOptions:
    """Which layers get LoRA and how (``LoRASAM(lora=...)``; ``lora-sam fit --model.lora.rank 8``).

    Args:
        rank: the rank r of each update (a positive integer).
        alpha: the update is scaled by alpha / rank.
        layers: a preset of the model family (``default``, ``qkv``, ``encoder``, ``decoder``) or ``fnmatch``
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
