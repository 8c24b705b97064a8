"""Segmenters: one interface over the models that ``lora_sam.evaluation.protocol`` scores on the same prompts.

A segmenter is set to one sample (``docs/contracts.md``) and then answers batches of K prompts
given in pixels of the training image; its masks come back at the training resolution (H, W),
so every model is scored against the same ground truth at the same resolution.

- ``LowResSegmenter``: a model built at the training resolution (base, LoRA, fully fine-tuned),
  through its ``promptable.PromptableModel`` (``encode`` / ``decode`` / ``upscale``).
- ``PredictorSegmenter``: the family's original pipeline (SAM v1: ``SamPredictor`` on a model built
  at 1024 x 1024, the model's ``predictor()``), given the training image upscaled back to the
  original size or the original full-resolution image; prompts are scaled into its frame and its
  masks (original size) resized back to the training resolution on the dataset's own
  nearest-neighbour grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import cv2
import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from lora_sam.data.rle import nearest_grid
from lora_sam.models.families import as_promptable
from lora_sam.models.promptable import PromptableModel

__all__ = [
    "LowResSegmenter",
    "Prediction",
    "PredictorSegmenter",
    "Segmenter",
    "original_image",
    "upscaled_image",
]

ORIGINAL_FRAME = (1024, 1024)
"""SAM's own frame (and SAM 2.1's, MobileSAM's); a model type's is ``families.original_frame`` (LiteMedSAM: 256)."""


@dataclass
class Prediction:
    """The answer of a segmenter to K prompts.

    ``masks``: bool (K, M, H, W) on the CPU at the training resolution, nothing outside the
    sample's ``input_size``; ``iou_pred``: float (K, M) on the CPU, the IoU head's predictions;
    ``low_res``: (K, M, h, w) unthresholded low-resolution logits in the segmenter's own frame
    (on its device), fed back as ``mask_input`` (K, 1, h, w) with the next click.
    M = 3 with ``multimask`` else 1.
    """

    masks: Tensor
    iou_pred: Tensor
    low_res: Tensor | None = None


class Segmenter(Protocol):
    """What ``lora_sam.evaluation.protocol`` needs of a model."""

    def set_image(self, sample: dict[str, Any]) -> None:
        """Prepare for prompts on ``sample`` (the dict of ``docs/contracts.md``)."""

    def predict(
        self,
        points: Tensor | None = None,
        labels: Tensor | None = None,
        boxes: Tensor | None = None,
        mask_input: Tensor | None = None,
        multimask: bool = True,
    ) -> Prediction:
        """Masks for K prompts: points (K, P, 2) (x, y) and labels (K, P) (1 / 0 / -1), or boxes
        (K, 4) XYXY, all in pixels of the training image; ``mask_input`` (K, 1, h, w) is a previous
        ``Prediction.low_res`` of this segmenter."""


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _sample_sizes(sample: dict[str, Any]) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(H, W) of the padded training frame, (h, w) of the image in it, (h0, w0) of the original."""
    frame = tuple(int(v) for v in sample["image"].shape[-2:])
    input_size = tuple(int(v) for v in sample["input_size"])
    original = tuple(int(v) for v in sample["original_size"])
    return frame, input_size, original  # type: ignore[return-value]


class LowResSegmenter:
    """A model built at the training resolution (``families.build``, ``build_sam(..., image_size)``), LoRA
    or not: a ``PromptableModel`` or its network.

    The image encoder runs once in ``set_image``; ``predict`` decodes all K prompts in one call
    and upscales the low-resolution logits bilinearly to (H, W). Pixels in the padding (outside
    ``input_size``) are never part of a mask, as ``Sam.postprocess_masks`` crops them away. It
    answers with the 3 multimask outputs or, with ``multimask=False``, SAM's single-mask output;
    which one each prompt gets is ``lora_sam.evaluation.protocol``'s choice (by default: 3 for the
    first click and for the box, the single-mask output for every later click, which also gets the
    kept mask's low-resolution logits as mask prompt).
    """

    def __init__(self, model: PromptableModel | nn.Module) -> None:
        self.model = as_promptable(model)
        self.module = self.model.module.eval()
        self.image_size = self.model.image_size
        self.embedding: Tensor | None = None
        self.valid: Tensor | None = None

    @torch.no_grad()
    def set_image(self, sample: dict[str, Any]) -> None:
        frame, (h, w), _ = _sample_sizes(sample)
        if frame != tuple(self.image_size):
            raise ValueError(f"sample {sample.get('image_id')}: image is {frame[0]}x{frame[1]} but the model "
                             f"was built at {self.image_size[0]}x{self.image_size[1]}; evaluate at the model's "
                             f"training resolution")
        device = _device(self.module)
        image = sample["image"].to(device=device, dtype=torch.float32)[None]
        self.embedding = self.model.encode(image, torch.tensor([[h, w]], device=device))
        valid = torch.zeros(frame, dtype=torch.bool)
        valid[:h, :w] = True
        self.valid = valid

    @torch.no_grad()
    def predict(  # the Segmenter protocol's signature, the same in every segmenter
        self,
        points: Tensor | None = None,
        labels: Tensor | None = None,
        boxes: Tensor | None = None,
        mask_input: Tensor | None = None,
        multimask: bool = True,
    ) -> Prediction:
        if self.embedding is None or self.valid is None:
            raise RuntimeError("call set_image(sample) before predict")
        device = self.embedding.device
        low, iou_pred = self.model.decode(
            self.embedding,
            points=None if points is None else points.to(device, torch.float32),
            labels=None if labels is None else labels.to(device),
            boxes=None if boxes is None else boxes.to(device, torch.float32),
            mask_input=None if mask_input is None else mask_input.to(device),
            multimask=multimask,
        )
        masks = (self.model.upscale(low, self.image_size) > self.model.mask_threshold).cpu() & self.valid
        return Prediction(masks=masks, iou_pred=iou_pred.float().cpu(), low_res=low)


def upscaled_image(sample: dict[str, Any]) -> np.ndarray:
    """The training image without its padding, resized back to the original size.

    Returns uint8 (h0, w0, 3) RGB: the (h, w) region of ``sample["image"]`` resized bilinearly
    (area averaging when shrinking) to ``original_size``.
    """
    _, (h, w), (h0, w0) = _sample_sizes(sample)
    crop = sample["image"][:, :h, :w].permute(1, 2, 0).float().round().clamp(0, 255).to(torch.uint8).numpy()
    if (h, w) == (h0, w0):
        return np.ascontiguousarray(crop)
    shrink = h0 * w0 < h * w
    return cv2.resize(crop, (w0, h0), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def original_image(sample: dict[str, Any]) -> np.ndarray:
    """The original full-resolution image of a sample, uint8 (h0, w0, 3) RGB.

    Taken from ``sample["original_image"]`` (an array) or read from ``sample["original_path"]``
    (``lora_sam.evaluation.run.eval_samples`` adds it for SA-1B folders and COCO files).
    """
    _, _, (h0, w0) = _sample_sizes(sample)
    if sample.get("original_image") is not None:
        image, source = np.asarray(sample["original_image"]), f"sample {sample.get('image_id')}: original_image"
    elif sample.get("original_path"):
        path = Path(sample["original_path"])
        try:
            with Image.open(path) as opened:
                image = np.asarray(opened.convert("RGB"))
        except OSError as err:
            raise ValueError(f"{path}: cannot read the original image ({err})") from err
        source = str(path)
    else:
        raise ValueError(f"sample {sample.get('image_id')}: no original image (neither 'original_image' nor "
                         f"'original_path'); this dataset cannot give it, use the upscaled training image")
    if image.shape != (h0, w0, 3) or image.dtype != np.uint8:
        raise ValueError(f"{source}: expected uint8 ({h0}, {w0}, 3) (the sample's original_size), "
                         f"got {image.dtype} {image.shape}")
    return image


def on_training_grid(full: Tensor, frame: tuple[int, int], input_size: tuple[int, int]) -> Tensor:
    """(..., h0, w0) masks at the original size -> bool (..., H, W) on the CPU: the (h, w) image region
    on the nearest-neighbour grid that resized the ground truth (``rle.nearest_grid``), padding False."""
    (h, w), (h0, w0) = input_size, full.shape[-2:]
    rows = torch.from_numpy(nearest_grid(h0, h)).to(full.device)
    cols = torch.from_numpy(nearest_grid(w0, w)).to(full.device)
    out = torch.zeros((*full.shape[:-2], *frame), dtype=torch.bool)
    out[..., :h, :w] = full.index_select(-2, rows).index_select(-1, cols).cpu()
    return out


class PredictorSegmenter:
    """The original pipeline of a model's family (``predictor()``): for SAM v1, ``SamPredictor`` on a model
    built at 1024 x 1024 (LiteMedSAM: its own pipeline at 256 x 256; ``families.original_frame``).

    Args:
        model_1024: ``families.build(model_type, checkpoint, (1024, 1024))`` or the network
            (``build_sam(model_type, checkpoint, (1024, 1024))``).
        source: ``"upscaled"``: the predictor gets the training image (padding cropped) resized
            back to the original size, so it sees what the low-resolution models saw;
            ``"original"``: the original full-resolution image (see ``original_image``).
        budget_bytes: prompts are decoded in chunks whose full-size masks stay under this.

    Prompts map between frames at pixel centres: the centre of training pixel x, (x + 0.5) in
    continuous coordinates, is (x + 0.5) * w0 / w in the original image and, through the predictor's
    ``to_frame`` (SAM v1: ``ResizeLongestSide``'s per-axis scale, less the half pixel SAM's prompt
    encoder adds back), a position in the 1024 px frame. Box corners map the same way. All K prompts
    go through the predictor at once (chunked only for memory). Its masks, at the original size, are
    resized to (h, w) on the nearest-neighbour grid that resized the ground truth
    (``rle.nearest_grid``) and zero padded to (H, W).
    """

    def __init__(self, model_1024: PromptableModel | nn.Module, *,
                 source: Literal["upscaled", "original"] = "upscaled", budget_bytes: int = 256 * 2**20) -> None:
        self.model = as_promptable(model_1024)
        self.module = self.model.module.eval()
        if source not in ("upscaled", "original"):
            raise ValueError(f"source must be 'upscaled' or 'original', got {source!r}")
        self.predictor = self.model.predictor()  # refuses a model not built at its type's own frame
        self.source = source
        self.budget_bytes = budget_bytes
        self.sizes: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None = None

    @torch.no_grad()
    def set_image(self, sample: dict[str, Any]) -> None:
        self.sizes = _sample_sizes(sample)
        image = upscaled_image(sample) if self.source == "upscaled" else original_image(sample)
        self.predictor.set_image(image)
        _, (h, w), (h0, w0) = self.sizes
        self.scale = torch.tensor([w0 / w, h0 / h], dtype=torch.float64)

    def _to_frame(self, coords: Tensor) -> Tensor:
        """(..., 2) (x, y) training pixels -> pixel coordinates of the predictor's frame, float32 on its device.

        Pixel centre to pixel centre (see the class docstring). Boxes go through as (K, 2, 2) corner
        pairs, which is what ``apply_boxes_torch`` does.
        """
        assert self.sizes is not None
        centres = ((coords.double().cpu() + 0.5) * self.scale).float()  # continuous, original image
        return self.predictor.to_frame(centres, self.sizes[2]).to(self.predictor.device)

    @torch.no_grad()
    def predict(  # the Segmenter protocol's signature, the same in every segmenter
        self,
        points: Tensor | None = None,
        labels: Tensor | None = None,
        boxes: Tensor | None = None,
        mask_input: Tensor | None = None,
        multimask: bool = True,
    ) -> Prediction:
        if self.sizes is None:
            raise RuntimeError("call set_image(sample) before predict")
        (height, width), (h, w), (h0, w0) = self.sizes
        device = self.predictor.device
        coords = None if points is None else self._to_frame(points)
        labels_d = None if labels is None else labels.to(device)
        boxes_d = None if boxes is None else self._to_frame(boxes.reshape(-1, 2, 2)).reshape(-1, 4)
        mask_d = None if mask_input is None else mask_input.to(device)
        k = next(t.shape[0] for t in (coords, boxes_d, mask_d) if t is not None)
        outputs = 3 if multimask else 1
        chunk = max(1, self.budget_bytes // (5 * outputs * h0 * w0))
        masks, ious, lows = [], [], []
        for start in range(0, k, chunk):
            part = slice(start, start + chunk)
            full, iou_pred, low = self.predictor.predict(
                None if coords is None else coords[part],
                None if labels_d is None else labels_d[part],
                None if boxes_d is None else boxes_d[part],
                None if mask_d is None else mask_d[part],
                multimask,
            )  # full: bool (k, M, h0, w0)
            masks.append(on_training_grid(full, (height, width), (h, w)))
            ious.append(iou_pred.float().cpu())
            lows.append(low)
        return Prediction(masks=torch.cat(masks), iou_pred=torch.cat(ious), low_res=torch.cat(lows))

