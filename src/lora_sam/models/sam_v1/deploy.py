"""Deployment of a merged 1024 px SAM: ONNX files, whole-image mask generation and its COCO RLE output.

``export_onnx`` writes the two halves of SAM that a browser or a C++ program runs apart:
``encoder.onnx`` (the heavy image encoder, once per image) and ``decoder.onnx`` (prompt encoder + mask
decoder + mask post-processing, once per click), the latter through the official
``segment_anything.utils.onnx.SamOnnxModel`` with the inputs of Meta's ``scripts/export_onnx_model.py``,
so Meta's demo code runs it as it runs the official file (with one fix: the crop of the padding follows
the image size given at run time, see ``_TracedSizeDecoder``). ``quantize=True`` adds int8 copies
(dynamic quantization: int8 weights, activations quantized at run time).

``automatic_mask_generator`` is the official "segment everything" pipeline (a grid of point prompts,
quality filters, NMS) over a given model (the SAM v1 family's ``Family.mask_generator``); its records become
SA-1B annotations in ``lora_sam.data.sa1b_write``, for every family alike.

Only the original resolution is supported: the official pre- and post-processing assume the
1024 px frame, so a model trained at a low resolution is merged into (or built at) 1024 px first.
This is the one module of the package beside ``lora_sam.models.sam_v1.model`` that imports ``segment_anything``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.modeling import Sam
from segment_anything.utils.onnx import SamOnnxModel
from segment_anything.utils.transforms import ResizeLongestSide

from lora_sam.errors import MissingExtra
from lora_sam.models.sam_v1.decoder import is_fast_decoder, use_fast_decoder
from lora_sam.models.sam_v1.model import (
    ORIGINAL_SIZE,
    SamV1,
    frame_of,
    image_size_of,
    intensity_of,
    model_type_of,
)

__all__ = [
    "DECODER_INPUTS",
    "DECODER_OUTPUTS",
    "automatic_mask_generator",
    "decoder_feed",
    "encoder_input",
    "export_onnx",
    "quantize_onnx",
    "require_onnx",
]

DECODER_INPUTS = (
    "image_embeddings",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
    "orig_im_size",
)
"""The decoder's inputs, named and ordered as in Meta's ONNX export script and demo."""
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")
ENCODER_INPUT, ENCODER_OUTPUT = "image", "image_embeddings"
ONNX_EXTRA = "pip install 'lora_sam[onnx]'"


def _check_deployable(sam: Sam) -> None:
    """Refuse models the official 1024 px pipeline would run wrongly: other resolutions, unmerged LoRA."""
    size = tuple(image_size_of(sam))
    if intensity_of(model_type_of(sam)) != "imagenet":
        raise ValueError(f"{model_type_of(sam)} scales each image by its own intensity range, which SAM's ONNX "
                         f"pipeline (mean and std) does not do: deploy it through its own pipeline "
                         f"(build_sam(..., image_size=({frame_of(model_type_of(sam))},) * 2) and its predictor())")
    grid = (tuple(sam.image_encoder.pos_embed.shape[1:3]) if hasattr(sam.image_encoder, "pos_embed")
            else (ORIGINAL_SIZE // 16, ORIGINAL_SIZE // 16))  # TinyViT (MobileSAM): no table, any frame
    if size != (ORIGINAL_SIZE, ORIGINAL_SIZE) or grid != (ORIGINAL_SIZE // 16, ORIGINAL_SIZE // 16):
        raise ValueError(
            f"the model is at {size[0]}x{size[1]} px; deployment needs the original {ORIGINAL_SIZE}x{ORIGINAL_SIZE} "
            f"px SAM: merge the adapter into the base (lora-sam export) or build the model with "
            f"build_sam(..., image_size=({ORIGINAL_SIZE}, {ORIGINAL_SIZE}))"
        )
    if any(hasattr(module, "lora_B") for module in sam.modules()):
        raise ValueError("the model still has LoRA layers: fold them in first (lora_sam.merge_lora(sam))")


def require_onnx() -> None:
    """Import onnx and onnxruntime, or say which extra installs them."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise MissingExtra(
            f"ONNX export needs the onnx and onnxruntime packages: {ONNX_EXTRA} ({err})"
        ) from err


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Silence the tracer's and the quantizer's chatter (shape warnings that do not apply to SAM)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def _decoder_example(sam: Sam) -> dict[str, torch.Tensor]:
    """Example inputs for tracing; any values do, 5 points so that the point axis is visibly dynamic."""
    generator = torch.Generator().manual_seed(0)
    h, w = sam.prompt_encoder.image_embedding_size
    return {
        "image_embeddings": torch.randn(1, sam.prompt_encoder.embed_dim, h, w, generator=generator),
        "point_coords": torch.randint(0, ORIGINAL_SIZE, (1, 5, 2), generator=generator).float(),
        "point_labels": torch.randint(0, 4, (1, 5), generator=generator).float(),
        "mask_input": torch.randn(1, 1, 4 * h, 4 * w, generator=generator),
        "has_mask_input": torch.tensor([1.0]),
        "orig_im_size": torch.tensor([1500.0, 2250.0]),
    }


class _TracedSizeDecoder(SamOnnxModel):
    """``SamOnnxModel`` whose crop of the padding follows ``orig_im_size`` in the exported graph.

    The official ``mask_postprocessing`` crops with ``int(...)`` bounds, which the tracer records as
    constants: the file then crops every image as if it had the tracing example's aspect ratio (masks
    off by up to 0.2 in logit here, shifted or stretched for other aspect ratios; Meta's repository has
    user reports of it). Selecting the rows and columns by ``arange`` keeps the sizes in the graph; the
    numbers are those of ``Sam.postprocess_masks`` (bilinear to 1024, crop, bilinear to the image size).
    """

    def mask_postprocessing(self, masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        masks = F.interpolate(
            masks, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False
        )
        resized = self.resize_longest_image_size(orig_im_size, self.img_size)
        rows = torch.arange(resized[0], device=masks.device)
        cols = torch.arange(resized[1], device=masks.device)
        masks = masks.index_select(2, rows).index_select(3, cols)
        size = orig_im_size.to(torch.int64)
        return F.interpolate(masks, size=(size[0], size[1]), mode="bilinear", align_corners=False)


def _export_decoder(sam: Sam, path: Path, opset: int, return_single_mask: bool) -> None:
    fast = is_fast_decoder(sam)
    use_fast_decoder(sam, False)  # the file carries Meta's graph of the decoder
    try:
        _trace_decoder(sam, path, opset, return_single_mask)
    finally:
        use_fast_decoder(sam, fast)


def _trace_decoder(sam: Sam, path: Path, opset: int, return_single_mask: bool) -> None:
    model = _TracedSizeDecoder(sam, return_single_mask=return_single_mask)
    example = {name: tensor.to(sam.device) for name, tensor in _decoder_example(sam).items()}
    torch.onnx.export(
        model,
        tuple(example[name] for name in DECODER_INPUTS),
        str(path),
        dynamo=False,
        opset_version=opset,
        do_constant_folding=True,
        input_names=list(DECODER_INPUTS),
        output_names=list(DECODER_OUTPUTS),
        dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
    )


def _export_encoder(sam: Sam, path: Path, opset: int) -> None:
    example = torch.zeros(1, 3, ORIGINAL_SIZE, ORIGINAL_SIZE, device=sam.device)
    torch.onnx.export(
        sam.image_encoder,
        (example,),
        str(path),
        dynamo=False,
        opset_version=opset,
        do_constant_folding=True,
        input_names=[ENCODER_INPUT],
        output_names=[ENCODER_OUTPUT],
    )


def quantize_onnx(path: str | os.PathLike) -> Path:
    """Write ``<name>.int8.onnx`` beside ``path``: its weights quantized to int8, activations at run time."""
    require_onnx()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = Path(path)
    out = path.with_name(f"{path.stem}.int8{path.suffix}")
    with _quiet_export():
        quantize_dynamic(path, out, weight_type=QuantType.QInt8)
    return out


@torch.no_grad()
def export_onnx(
    sam: Sam,
    out_dir: str | os.PathLike,
    *,
    opset: int = 17,
    quantize: bool = False,
    return_single_mask: bool = True,
    parts: Sequence[str] = ("encoder", "decoder"),
) -> dict[str, Path]:
    """Write ``sam``'s image encoder and its prompt decoder as ONNX files into ``out_dir``.

    Args:
        sam: a plain (merged) SAM at 1024 px, e.g. ``build_sam(model_type, merged_checkpoint, 1024)``.
        opset: the ONNX opset (17 is what onnxruntime >= 1.13 and onnxruntime-web run).
        quantize: also write ``encoder.int8.onnx`` and ``decoder.int8.onnx``.
        parts: which files to write; ``("decoder",)`` alone is what Meta's export script writes.
        return_single_mask: the decoder returns the best of SAM's masks for the prompt (as Meta's web
            demo uses it); False returns all four outputs (the single-mask one first).
    Returns:
        ``{"encoder": ..., "decoder": ...}`` (the ``parts`` written) and, with ``quantize``, ``"encoder_int8"``
        and ``"decoder_int8"``.
        ``encoder.onnx`` takes ``image`` (1, 3, 1024, 1024) float: the image resized to longest side 1024,
        normalised and padded (``encoder_input``) and returns ``image_embeddings``; ``decoder.onnx`` takes
        ``DECODER_INPUTS`` (see ``decoder_feed``) and returns ``DECODER_OUTPUTS``.
    """
    unknown = sorted(set(parts) - {"encoder", "decoder"})
    if unknown or not parts:
        raise ValueError(f"parts must name 'encoder' and/or 'decoder', got {list(parts)}")
    _check_deployable(sam)
    require_onnx()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sam = sam.eval()
    paths = {name: out_dir / f"{name}.onnx" for name in ("encoder", "decoder") if name in parts}
    with _quiet_export():
        if "encoder" in paths:
            _export_encoder(sam, paths["encoder"], opset)
        if "decoder" in paths:
            _export_decoder(sam, paths["decoder"], opset, return_single_mask)
    if quantize:
        paths.update({f"{name}_int8": quantize_onnx(path) for name, path in list(paths.items())})
    return paths


def encoder_input(sam: Sam, image: np.ndarray) -> np.ndarray:
    """The ``image`` input of ``encoder.onnx`` for an RGB uint8 (H, W, 3) image: (1, 3, 1024, 1024) float32.

    The same steps as ``SamPredictor.set_image``: resize to longest side 1024, normalise, pad right/bottom.
    """
    resized = ResizeLongestSide(ORIGINAL_SIZE).apply_image(np.asarray(image))
    tensor = torch.as_tensor(resized).permute(2, 0, 1)[None].float().to(sam.device)
    with torch.no_grad():
        return sam.preprocess(tensor).cpu().numpy()


def decoder_feed(
    embedding: np.ndarray,
    points: np.ndarray,
    labels: np.ndarray,
    image_hw: tuple[int, int],
    mask_input: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The inputs of ``decoder.onnx`` for clicks on an image of size ``image_hw`` (H, W).

    Args:
        embedding: (1, C, 64, 64) from ``encoder.onnx`` (or ``SamPredictor.features``).
        points: (P, 2) (x, y) pixels of the original image; labels (P,): 1 positive, 0 negative.
        mask_input: (1, 1, 256, 256) low-resolution logits of an earlier prediction, or None.
    Returns:
        the feed dict; as in Meta's demo, a padding point (label -1) is appended since no box is given.
    """
    coords = ResizeLongestSide(ORIGINAL_SIZE).apply_coords(np.asarray(points, dtype=np.float32), image_hw)
    coords = np.concatenate([coords, np.zeros((1, 2))])[None].astype(np.float32)
    labels = np.concatenate([np.asarray(labels, dtype=np.float32), [-1.0]])[None].astype(np.float32)
    low_res = tuple(4 * s for s in embedding.shape[-2:])
    has_mask = mask_input is not None
    return {
        "image_embeddings": embedding.astype(np.float32),
        "point_coords": coords,
        "point_labels": labels,
        "mask_input": (mask_input if has_mask else np.zeros((1, 1, *low_res))).astype(np.float32),
        "has_mask_input": np.array([1.0 if has_mask else 0.0], dtype=np.float32),
        "orig_im_size": np.array(image_hw, dtype=np.float32),
    }


def automatic_mask_generator(sam: Sam, **kwargs: Any) -> SamAutomaticMaskGenerator:
    """The official ``SamAutomaticMaskGenerator`` over ``sam`` (merged, 1024 px); ``kwargs`` go to it as is.

    Its defaults (32x32 points, predicted IoU >= 0.88, stability >= 0.95) were chosen for ViT-H; its
    ``generate(image)`` takes an RGB uint8 (H, W, 3) image and returns one record per mask.
    """
    _check_deployable(sam)
    return SamV1(sam).mask_generator(**kwargs)
