"""LiteMedSAM's own inference pipeline, as an ``ImagePredictor`` of the model seam.

LiteMedSAM (the MedSAM authors' 2024 small model: a TinyViT image encoder with SAM v1's prompt encoder and mask
decoder) was trained in a 256 px frame with pixels scaled per image, and is used so: the image's longest side
resized to 256 px (area averaging), its intensities min-max scaled to [0, 1] over the resized image (no mean or
std), zero padded to 256 x 256, the prompt scaled into that frame; the low-resolution logits (256 x 256 here:
the embedding is 64 x 64) cropped to the image, resized bilinearly to the original size, and thresholded at
logit 0 (sigmoid 0.5). LiteMedSAM itself was trained with boxes only and one output; the pipeline takes points,
earlier logits and the three outputs too, as ``SamPredictor`` does, so that a model fine-tuned here on clicks runs
in it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from torch import Tensor

__all__ = ["LiteMedSAMPredictor", "min_max_scale"]

MIN_RANGE = 1e-8
"""The smallest intensity range divided by (a flat image stays flat, at 0)."""


def min_max_scale(image: Tensor, inside: Tensor | None = None) -> Tensor:
    """(B, 3, H, W) pixels -> each image scaled to [0, 1] by the minimum and maximum over its own pixels (those
    where ``inside`` (B, 1, H, W) bool is set, when the batch is padded; the padding is left to the caller)."""
    x = image.float()
    if inside is None:
        low = x.amin(dim=(1, 2, 3), keepdim=True)
        high = x.amax(dim=(1, 2, 3), keepdim=True)
    else:
        low = torch.where(inside, x, torch.inf).amin(dim=(1, 2, 3), keepdim=True)
        high = torch.where(inside, x, -torch.inf).amax(dim=(1, 2, 3), keepdim=True)
    return (x - low) / (high - low).clamp_min(MIN_RANGE)


class LiteMedSAMPredictor:
    """LiteMedSAM's pipeline (see the module) over a ``Sam`` built at 256 x 256 with a TinyViT encoder."""

    def __init__(self, sam: Sam, frame: int = 256) -> None:
        self.sam = sam.eval()
        self.frame = frame
        self.device = next(sam.parameters()).device
        self.embedding: Tensor | None = None
        self._input_size = (frame, frame)
        self._original_size = (frame, frame)

    @property
    def input_size(self) -> tuple[int, int]:
        return self._input_size

    @torch.no_grad()
    def set_image(self, image: np.ndarray) -> None:
        h0, w0 = image.shape[:2]
        scale = self.frame / max(h0, w0)
        h, w = int(h0 * scale + 0.5), int(w0 * scale + 0.5)
        x = torch.from_numpy(np.array(image, dtype=np.float32)).to(self.device).permute(2, 0, 1)[None]
        if (h, w) != (h0, w0):
            x = F.interpolate(x, size=(h, w), mode="area")
        x = F.pad(min_max_scale(x), (0, self.frame - w, 0, self.frame - h))
        self.embedding = self.sam.image_encoder(x)
        self._input_size, self._original_size = (h, w), (h0, w0)

    def to_frame(self, coords: Tensor, original_size: tuple[int, int]) -> Tensor:
        h0, w0 = original_size
        h, w = self._input_size
        scale = torch.tensor([w / w0, h / h0], dtype=coords.dtype, device=coords.device)
        return coords * scale - 0.5  # the prompt encoder adds the half pixel back

    @torch.no_grad()
    def predict(self, points: Tensor | None, labels: Tensor | None, boxes: Tensor | None,
                mask_input: Tensor | None, multimask: bool) -> tuple[Tensor, Tensor, Tensor]:
        if self.embedding is None:
            raise RuntimeError("call set_image(image) before predict")
        sparse, dense = self.sam.prompt_encoder(points=None if points is None else (points, labels),
                                                boxes=boxes, masks=mask_input)
        low_res, iou_pred = self.sam.mask_decoder(
            image_embeddings=self.embedding, image_pe=self.sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask)
        h, w = self._input_size
        # the logits are at the frame's side (a 64 x 64 embedding, upscaled 4x): crop, then resize
        frame_logits = F.interpolate(low_res, size=(self.frame, self.frame), mode="bilinear", align_corners=False)
        full = F.interpolate(frame_logits[..., :h, :w], size=self._original_size, mode="bilinear",
                             align_corners=False)
        return full > self.sam.mask_threshold, iou_pred, low_res
