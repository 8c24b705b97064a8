"""What the training recipe and the evaluation need from a promptable segmentation model.

``PromptableModel`` is the seam between the recipe and a model family: encode an image once,
decode K prompts of it together, upscale low-resolution logits. SAM v1 (``model.SamV1``) is
its only implementation today; another family (SAM 2's image model) is a new file with a
class of the same shape, and the recipe runs on it unchanged.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

__all__ = ["PromptableModel"]


@runtime_checkable
class PromptableModel(Protocol):
    """A promptable segmenter as the interactive recipe drives it (all tensors on one device)."""

    @property
    def low_res_size(self) -> tuple[int, int]:
        """(h, w) of the low-resolution logits that ``decode`` returns and takes back as ``mask_input``."""
        ...

    def encode(self, images: Tensor, input_size: Tensor | None = None) -> Tensor:
        """(B, 3, H, W) RGB 0..255, padded right/bottom, and (B, 2) (h, w) before padding -> embeddings (B, ...)."""
        ...

    def decode(
        self,
        embedding: Tensor,
        *,
        points: Tensor | None = None,
        labels: Tensor | None = None,
        boxes: Tensor | None = None,
        mask_input: Tensor | None = None,
        multimask: bool = True,
        all_outputs: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """K prompts of one image -> low-resolution logits (K, M, h, w) and predicted IoUs (K, M).

        ``embedding`` is one image's (1, ...); points (K, P, 2) (x, y) training pixels with labels
        (K, P) 1 / 0 / -1 (padding); boxes (K, 4) XYXY; mask_input (K, 1, h, w) logits;
        M = 3 if ``multimask`` else 1 (the single-mask output); ``all_outputs``: M = 1 + 3 from one
        pass, the single-mask output first.
        """
        ...

    def upscale(self, low_res_logits: Tensor, size: tuple[int, int]) -> Tensor:
        """(K, M, h, w) low-resolution logits -> (K, M, H, W) logits at the training resolution."""
        ...
