"""The decoder side of a training step: K prompts of one image decoded, upscaled, paired with GT masks, scored.

``recipe.interactive_step`` hands each round's prompts to a decoder side and adds up what it returns. Two
of them, with the same numbers to float tolerance (tests check losses and gradients):

- ``EagerDecoder`` (the default): the prompts as they come, the logits cropped to the image's
  ``input_size`` (the padding left out, as ``Sam.postprocess_masks`` does).
- ``StaticKDecoder`` (``ComputeOptions.compile_decoder``): a *static-K* path for ``torch.compile``. The
  prompts are padded to ``masks_per_image`` rows (copies of the first, which a row mask leaves out of every
  term); the logits stay over the whole training frame, set to -1e4 outside the image, where every term of
  SAM's loss is exactly 0 and no gradient flows; the focal mean is rescaled to the image's pixels. Its
  shapes then depend only on the kind of round (first point, box, n clicks with the mask prompt) and on the
  frame, never on K or the image's size, so each kind compiles once (``dynamic=False``; Inductor's dynamic
  shapes fail on this graph in torch 2.14). SAM v1's prompt encoder is written without boolean-mask writes
  (``model.encode_prompts``), so a decode is one graph.

On a 2-core CPU the padding costs more than compiling saves; ``BENCHMARKS.md`` has the numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor

from lora_sam.models.promptable import PromptableModel
from lora_sam.training.losses import assign_outputs, object_loss, sam_loss

__all__ = ["OUTSIDE", "DecodeMode", "EagerDecoder", "Scored", "ScoringOptions", "StaticKDecoder", "StepImage", "decode_and_score"]

DecodeMode = Literal["multi", "single", "both"]
"""``multi``: the 3 outputs against the GT masks; ``single``: the single-mask output against the target;
``both``: one pass, the 3 outputs against the GT masks and then the single one against the target."""
OUTSIDE = -1e4
"""The static-K path's logit outside the image: sigmoid gives exactly 0 in float32, so no term sees it."""
Scored = tuple[dict[str, Tensor], Tensor, Tensor, Tensor]
"""(losses, the chosen output's low-resolution logits (K, 1, h', w'), its mask (K, h, w) cropped to the image,
the GT index each output was paired with (K, M; -1: the target, or none))."""


class ScoringOptions(Protocol):
    """What the decoder side reads of ``recipe.RecipeOptions``."""

    pairing: str
    masks_per_image: int
    iou_loss: str
    object_weight: float

    def loss_weights(self) -> tuple[float, float, float]: ...


@dataclass
class StepImage:
    """One image of a batch inside the step."""

    embedding: Tensor  # (1, ...)
    frame_masks: Tensor  # (N, H, W) bool over the padded training frame (False in the padding)
    size: tuple[int, int]  # (h, w): the image's input_size inside the frame
    areas: Tensor  # (N,)
    boxes: Tensor  # (N, 4) XYXY

    @property
    def masks(self) -> Tensor:
        """(N, h, w): the masks cropped to the image."""
        return self.frame_masks[:, : self.size[0], : self.size[1]]

    @property
    def frame(self) -> tuple[int, int]:
        return tuple(self.frame_masks.shape[-2:])  # type: ignore[return-value]


def decode_and_score(model: PromptableModel, options: ScoringOptions, embedding: Tensor, frame: tuple[int, int],
                     mode: DecodeMode, gt: Tensor | None, target: Tensor, prompts: dict[str, Tensor], *,
                     inside: Tensor | None = None, pixels: Tensor | None = None,
                     rows: Tensor | None = None) -> list[Scored]:
    """Decode K prompts and score them.

    ``gt`` (K, 3, ., .) trains the 3 outputs, paired by ``options.pairing`` (it holds the target:
    ``include=``); the single output trains against ``target`` (K, ., .). Without ``inside`` the masks are
    cropped to the image and so are the logits; with it (the static-K path) they cover the frame and
    ``inside`` (H, W) marks the image, ``pixels`` counts it and ``rows`` (K,) marks the real prompts.
    Returns one ``Scored`` per set of outputs (two for ``both``: the 3, then the single one).
    """
    scores = bool(options.object_weight)  # SAM 2.1's object score trains: the decode returns its logits too
    low, iou_pred, *rest = model.decode(embedding, multimask=mode != "single", all_outputs=mode == "both",
                                        **prompts, **({"object_score": True} if scores else {}))
    objects = rest[0] if scores else None
    logits = model.upscale(low, frame)
    if inside is None:
        logits = logits[..., : target.shape[-2], : target.shape[-1]]  # the padding cropped
    else:
        logits = torch.where(inside, logits, OUTSIDE)
    if mode == "both":  # the decoder's 4 mask tokens come from one pass: the single output costs no decode
        heads = ((slice(1, None), gt), (slice(0, 1), None))
    else:
        heads = ((slice(None), gt if mode == "multi" else None),)
    # one object score per pass: it trains with the first set of outputs
    return [_score(options, low[:, s], iou_pred[:, s], logits[:, s], g, target, pixels, rows, objects if n == 0 else None)
            for n, (s, g) in enumerate(heads)]


def _score(options: ScoringOptions, low: Tensor, iou_pred: Tensor, logits: Tensor, gt: Tensor | None, target: Tensor,
           pixels: Tensor | None, rows: Tensor | None, objects: Tensor | None = None) -> Scored:
    """The losses of one set of outputs; the chosen output is the one of highest predicted IoU."""
    focal, dice, iou = options.loss_weights()
    pairing = options.pairing
    best = iou_pred.argmax(1)
    k = torch.arange(len(best), device=best.device)
    paired = torch.full(iou_pred.shape, -1, dtype=torch.long, device=best.device)
    weight = None
    if gt is None or pairing == "min":
        gt_used = target[:, None]
    else:  # the pairing's costs are the loss's: the focal term over the image's pixels
        image_focal = focal if pixels is None else focal * (logits.shape[-2] * logits.shape[-1] / pixels)
        paired = assign_outputs(logits, gt, pairing, focal_weight=image_focal, dice_weight=dice)
        # an output without a distinct GT: no mask loss; its IoU head learns its IoU with the target
        with_target = torch.cat([gt, target[:, None]], 1)
        index = torch.where(paired >= 0, paired, gt.shape[1])
        gt_used = with_target.gather(1, index[:, :, None, None].expand_as(logits))
        weight = paired >= 0 if pairing == "distinct" else None
    present = target.flatten(1).any(1) if objects is not None else None  # Meta's target_obj
    losses = sam_loss(logits, iou_pred, gt_used, focal_weight=focal, dice_weight=dice, iou_weight=iou,
                      min_only=gt is not None and pairing == "min", mask_weight=weight, rows=rows, pixels=pixels,
                      iou_loss=options.iou_loss, present=present)
    if objects is not None:
        losses["object"] = object_loss(objects, present, rows)  # type: ignore[arg-type]
        losses["total"] = losses["total"] + float(options.object_weight) * losses["object"]
    return losses, low[k, best][:, None], logits[k, best] > 0, paired


class EagerDecoder:
    """The decoder side as the prompts come (the default)."""

    def __init__(self, model: PromptableModel, options: ScoringOptions) -> None:
        resolve = getattr(options, "for_model", None)  # RecipeOptions: rules left at None are the model family's
        self.model, self.options = model, resolve(model) if resolve is not None else options

    def __call__(self, image: StepImage, mode: DecodeMode, gt_index: Tensor | None, target_index: Tensor,
                 **prompts: Tensor | None) -> list[Scored]:
        """Decode the prompts of ``image``'s targets ``target_index`` (K,), GT masks ``gt_index`` (K, 3)."""
        masks = image.masks
        gt = masks[gt_index] if gt_index is not None else None
        given = {n: v for n, v in prompts.items() if v is not None}
        return decode_and_score(self.model, self.options, image.embedding, image.frame, mode, gt, masks[target_index],
                                given)


class StaticKDecoder(EagerDecoder):
    """The static-K decoder side (module docstring), compiled by ``torch.compile`` with ``backend`` (None: run
    eagerly, for tests and to measure what the padding costs).

    The compiled function is ``torch.compile``'s cache of this class's code: one process trains one model
    (a second model in the same process compiles again, up to ``torch._dynamo.config.cache_size_limit``
    graphs, then runs eagerly). Under ``torch.no_grad`` (validation) it runs eagerly: those graphs would
    be compiled apart and used a few times.
    """

    def __init__(self, model: PromptableModel, options: ScoringOptions, *,
                 backend: str | Callable[..., object] | None = "inductor") -> None:
        super().__init__(model, options)
        self.rows = int(options.masks_per_image)
        self._compiled = self._run if backend is None else torch.compile(self._run, backend=backend, dynamic=False)
        self._inside: dict[tuple[tuple[int, int], tuple[int, int]], tuple[Tensor, Tensor]] = {}

    def _run(self, embedding: Tensor, frame: tuple[int, int], mode: DecodeMode, gt: Tensor | None, target: Tensor,
             prompts: dict[str, Tensor], inside: Tensor, pixels: Tensor, rows: Tensor) -> list[Scored]:
        return decode_and_score(self.model, self.options, embedding, frame, mode, gt, target, prompts,
                                inside=inside, pixels=pixels, rows=rows)

    def __call__(self, image: StepImage, mode: DecodeMode, gt_index: Tensor | None, target_index: Tensor,
                 **prompts: Tensor | None) -> list[Scored]:
        if not torch.is_grad_enabled():
            return super().__call__(image, mode, gt_index, target_index, **prompts)
        k, (h, w) = len(target_index), image.size
        if k > self.rows:
            raise ValueError(f"StaticKDecoder: {k} prompts of one image, more than masks_per_image ({self.rows})")
        device = image.frame_masks.device
        pad = torch.cat([torch.arange(k, device=device), torch.zeros(self.rows - k, dtype=torch.long, device=device)])
        key = (image.frame, image.size)
        if key not in self._inside:  # the image's pixels in the frame, and their count (a tensor: no recompiles)
            inside = torch.zeros(image.frame, dtype=torch.bool, device=device)
            inside[:h, :w] = True
            self._inside[key] = (inside, torch.tensor(float(h * w), device=device))
        scored = self._compiled(
            image.embedding, image.frame, mode, image.frame_masks[gt_index[pad]] if gt_index is not None else None,
            image.frame_masks[target_index[pad]], {n: v[pad] for n, v in prompts.items() if v is not None},
            *self._inside[key], torch.arange(self.rows, device=device) < k)
        return [(losses, low[:k], chosen[:k, :h, :w], paired[:k]) for losses, low, chosen, paired in scored]
