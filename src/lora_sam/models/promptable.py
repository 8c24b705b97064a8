"""What training, evaluation, the app and the report need from a promptable segmentation model.

``PromptableModel`` is the seam between them and a model family: encode an image once, decode K
prompts of it together, upscale low-resolution logits; its ``module`` is the network (what LoRA
wraps, what trains and is saved). ``ImagePredictor`` is the family's own full-resolution pipeline
(for SAM v1 ``SamPredictor`` at 1024 px), which the evaluation compares against. SAM v1
(``model.SamV1``) implements both; another family is one new module with classes of the same
shape and an entry in ``lora_sam.models.families``, and everything above runs on it unchanged.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
from torch import Tensor, nn

__all__ = ["ImagePredictor", "PromptableModel"]


@runtime_checkable
class PromptableModel(Protocol):
    """A promptable segmenter as the interactive recipe drives it (all tensors on one device)."""

    @property
    def module(self) -> nn.Module:
        """The network: LoRA wraps its layers, its parameters train, ``.to`` / ``.eval`` move and switch it."""
        ...

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the padded frame it was built for (the training resolution)."""
        ...

    @property
    def mask_threshold(self) -> float:
        """Logits above this are foreground."""
        ...

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


@runtime_checkable
class ImagePredictor(Protocol):
    """A family's own full-resolution pipeline, set to one image (``PromptableModel``'s ``predictor()``)."""

    device: object

    @property
    def input_size(self) -> tuple[int, int]:
        """(h, w) the image fills in the pipeline's padded frame, after ``set_image``."""
        ...

    def set_image(self, image: np.ndarray) -> None:
        """(h0, w0, 3) uint8 RGB, the image at its own size."""
        ...

    def to_frame(self, coords: Tensor, original_size: tuple[int, int]) -> Tensor:
        """(..., 2) continuous (x, y) positions in the original image -> the pipeline's own frame."""
        ...

    def predict(self, points: Tensor | None, labels: Tensor | None, boxes: Tensor | None,
                mask_input: Tensor | None, multimask: bool) -> tuple[Tensor, Tensor, Tensor]:
        """K prompts in the frame's coordinates -> bool masks (K, M, h0, w0) at the image's size, IoU
        predictions (K, M) and low-resolution logits (K, M, h, w) to feed back."""
        ...
