"""The models the app compares, built once and shared by every page session, and their embedding cache.

Each model is built by ``lora_sam.evaluation.run.build_segmenters`` (so a bad file gives its error
text) at two resolutions: the training resolution, answered by ``LowResSegmenter``, and 1024 px, the
same weights (the base, the adapter merged into the base at 1024 px, the full model's table resized)
answered by the original pipeline, ``PredictorSegmenter``. The 1024 px models are built on first use.

An image is encoded once per (image, model, resolution): ``ModelBank.segmenter`` keeps the segmenters
whose ``set_image`` ran, least recently used first out, so a click only runs the prompt encoder and
the mask decoder.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lora_sam.evaluation.options import EvalModels
from lora_sam.evaluation.run import build_segmenters
from lora_sam.evaluation.segmenters import LowResSegmenter, PredictorSegmenter, Segmenter
from lora_sam.models.checkpoints import BUILTIN_MODEL_TYPE
from lora_sam.models.families import as_promptable, data_frame, original_frame

__all__ = ["RESOLUTIONS", "ModelBank", "ModelSpec", "Resolution", "display_logits"]

Resolution = Literal["low", "1024"]
AUTOMATIC_POINTS = 8  # the page's "segment everything" grid per side (64 prompts; SAM's default 32 is 16x slower)
AUTOMATIC_SHOWN = 40  # the masks drawn per model, best predicted IoU first
RESOLUTIONS: tuple[Resolution, ...] = ("low", "1024")
ADAPTER_SUFFIXES = (".safetensors",)
FULL_SUFFIXES = (".pth", ".pt")


@dataclass(frozen=True)
class ModelSpec:
    """One compared model: ``kind`` is ``"base"``, ``"lora"`` (an adapter on the base) or ``"full"``."""

    name: str
    kind: Literal["base", "lora", "full"]
    path: str


class ModelBank:
    """The base, each LoRA adapter and each fully fine-tuned model, at both resolutions.

    Args:
        model_type, checkpoint, image_size: the base model and the training resolution (H, W), as for
            ``build_segmenters``; ``checkpoint=None`` is the built-in tiny base for ``tiny``; ``image_size=None``
            the family's default. ``frame`` is how images enter it (``SampleOptions.frame``).
        adapters: LoRA ``.safetensors`` files on the base; ``fulls``: fully fine-tuned ``model.pth`` files.
        device: where the models run (default: cuda when available).
        cache_size: how many encoded (image, model, resolution) triples are kept.
        decode_threads: torch CPU threads while decoding a prompt (``decoding``); the decoder's small
            matrices gain nothing from more, and on a busy CPU two threads waiting on each other make a
            click many times slower. Encoding uses torch's own setting.

    Raises ``ValueError`` / ``FileNotFoundError`` with ``build_segmenters``' text for a file that does
    not fit. Shared by every page session: ``copy.deepcopy`` returns the bank itself.
    """

    def __init__(self, *, model_type: str = BUILTIN_MODEL_TYPE, checkpoint: str | Path | None = None,
                 image_size: tuple[int, int] | None = None, adapters: tuple[str | Path, ...] | list = (),
                 fulls: tuple[str | Path, ...] | list = (), device: str | torch.device | None = None,
                 cache_size: int = 24, decode_threads: int = 1) -> None:
        self.model_type = model_type
        self.image_size, self.frame = data_frame(model_type, image_size)  # the frame: images enter it so
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.cache_size = cache_size
        self.decode_threads = decode_threads
        self.lock = threading.RLock()
        built = build_segmenters(EvalModels(model_type, checkpoint, self.image_size, tuple(adapters), tuple(fulls)),
                                 device=self.device)
        self.checkpoint = built["base"][1]["path"]
        self.specs: dict[str, ModelSpec] = {}
        self._models: dict[tuple[str, Resolution], nn.Module] = {}
        for name, (segmenter, info) in built.items():
            self.specs[name] = ModelSpec(name, info["kind"], info["path"])
            self._models[name, "low"] = segmenter.module  # type: ignore[attr-defined]
        self._cache: OrderedDict[tuple[str, str, Resolution], Segmenter] = OrderedDict()

    def __deepcopy__(self, memo: dict[int, Any]) -> ModelBank:
        return self

    @contextmanager
    def decoding(self) -> Iterator[None]:
        """Hold the bank and run torch on ``decode_threads`` CPU threads (restored after)."""
        with self.lock:
            threads = torch.get_num_threads()
            if self.device.type == "cpu" and self.decode_threads and threads != self.decode_threads:
                torch.set_num_threads(self.decode_threads)
            try:
                yield
            finally:
                if torch.get_num_threads() != threads:
                    torch.set_num_threads(threads)

    @property
    def names(self) -> list[str]:
        return list(self.specs)

    def _build(self, spec: ModelSpec, size: tuple[int, int]) -> nn.Module:
        models = EvalModels(self.model_type, self.checkpoint, size,
                            adapters=(spec.path,) if spec.kind == "lora" else (),
                            fulls=(spec.path,) if spec.kind == "full" else (), base=spec.kind == "base")
        built = build_segmenters(models, device=self.device)
        (segmenter, _), = built.values()
        return segmenter.module  # type: ignore[attr-defined]

    def _unique(self, kind: str, path: Path) -> str:
        name = f"{kind}:{path.stem}"
        if name in self.specs:
            name = f"{kind}:{path.parent.name}/{path.stem}"
        base, count = name, 1
        while name in self.specs:
            count += 1
            name = f"{base}#{count}"
        return name

    def add(self, path: str | Path) -> str:
        """Add a LoRA adapter (``.safetensors``) or a fully fine-tuned model (``.pth``); its name.

        Raises ``ValueError`` (the text of ``build_segmenters``) when the file does not fit the base;
        the bank is unchanged then.
        """
        path = Path(path)
        if path.suffix in ADAPTER_SUFFIXES:
            kind: Literal["lora", "full"] = "lora"
        elif path.suffix in FULL_SUFFIXES:
            kind = "full"
        else:
            raise ValueError(f"{path.name}: expected a LoRA adapter (.safetensors) or a fully fine-tuned "
                             f"model (.pth), got a {path.suffix or 'file without suffix'}")
        spec = ModelSpec(self._unique(kind, path), kind, str(path))
        with self.lock:
            sam = self._build(spec, self.image_size)
            self.specs[spec.name] = spec
            self._models[spec.name, "low"] = sam
        return spec.name

    @property
    def pipeline_label(self) -> str:
        """The model type's own pipeline, as the page names it: "1024 px (SamPredictor)", "256 px (LiteMedSAM's
        pipeline)", ..."""
        from lora_sam.models.families import family_of

        side = original_frame(self.model_type)[0]
        name = "LiteMedSAM's pipeline" if self.model_type == "lite_medsam" else family_of(self.model_type).pipeline
        return f"{side} px ({name})"

    def model(self, name: str, resolution: Resolution) -> nn.Module:
        """The network of model ``name`` at the training resolution (``"low"``) or in its model type's own frame
        (``"1024"``: 1024 px, LiteMedSAM's 256 px; built now)."""
        with self.lock:
            key = (name, resolution)
            if key not in self._models:
                self._models[key] = self._build(self.specs[name], original_frame(self.model_type))
            return self._models[key]

    def automatic(self, name: str, image: np.ndarray, points_per_side: int = AUTOMATIC_POINTS,
                  shown: int = AUTOMATIC_SHOWN) -> tuple[np.ndarray, np.ndarray]:
        """Model ``name``'s automatic masks ("segment everything") of ``image`` (uint8 (h, w, 3) RGB), through
        its family's mask generator at 1024 px (an adapter merged, as deployed): the ``shown`` best by
        predicted IoU, (P, h, w) bool, and those IoUs (P,), best first. The generator's quality filters are
        off (tuned for ViT-H, they leave a small model nothing), its NMS stays."""
        with self.decoding():
            generator = as_promptable(self.model(name, "1024")).mask_generator(
                points_per_side=points_per_side, pred_iou_thresh=0.0, stability_score_thresh=0.0)
            with torch.no_grad():
                records = sorted(generator.generate(image), key=lambda r: -float(r["predicted_iou"]))[:shown]
        masks = np.stack([r["segmentation"] for r in records]) if records else np.zeros((0, *image.shape[:2]), bool)
        return masks, np.array([float(r["predicted_iou"]) for r in records])

    def segmenter(self, image_key: str, sample: dict[str, Any], name: str, resolution: Resolution) -> Segmenter:
        """The segmenter of ``name`` at ``resolution`` with ``sample`` set (encoded once, then cached).

        ``image_key`` identifies the sample's pixels. At 1024 px the predictor gets the original image
        when the sample carries ``original_image``, else the training image upscaled.
        """
        with self.lock:
            key = (image_key, name, resolution)
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            sam = self.model(name, resolution)
            if resolution == "low":
                segmenter: Segmenter = LowResSegmenter(sam)
            else:
                source = "original" if sample.get("original_image") is not None else "upscaled"
                segmenter = PredictorSegmenter(sam, source=source)
            segmenter.set_image(sample)
            self._cache[key] = segmenter
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            return segmenter


def display_logits(segmenter: Segmenter, low_res: Tensor, sample: dict[str, Any], size: tuple[int, int]) -> Tensor:
    """Low-resolution logits (M, h, w) of ``segmenter`` resized onto the displayed image (M, dh, dw).

    The logits cover the segmenter's padded frame (the training frame, or the 1024 x 1024 frame of
    ``SamPredictor``); the image fills its top-left part. That part is cut out at the frame's size and
    resized bilinearly to ``size`` = (dh, dw), so a mask drawn from it (logits > 0) is smooth at any
    resolution. The masks scored against the ground truth stay those of ``Segmenter.predict``.
    """
    if isinstance(segmenter, PredictorSegmenter):
        frame, (h, w) = tuple(segmenter.model.image_size), segmenter.predictor.input_size
    else:
        frame = tuple(int(v) for v in sample["image"].shape[-2:])
        h, w = (int(v) for v in sample["input_size"])
    full = segmenter.model.upscale(low_res[None].float(), frame)[0, :, :h, :w]  # type: ignore[attr-defined]  # (M, h, w) in the frame's pixels
    return F.interpolate(full[None], size=tuple(size), mode="bilinear", align_corners=False)[0].cpu()
