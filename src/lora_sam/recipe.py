"""SAM's interactive training step as plain functions: (model, batch, generator, options) -> losses + records.

Per image: the image encoder runs once; up to ``masks_per_image`` target masks get a first
prompt, a foreground point (GT: ``point_sample``) or the target's noisy box (GT: ``box_sample``,
one iteration); point prompts go on for up to ``iterations`` rounds, each adding a point drawn
from the error region of the output with the highest predicted IoU, reassigning the GT over all
points so far and feeding that output's low-resolution logits back as the mask prompt. All
prompts of a group (points / boxes) of one image are decoded in one call.

Nothing here knows Lightning: ``module.LoRASAM`` calls ``interactive_step`` and logs its
``StepResult``; the report replays it with a trained model and explicit options.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

from lora_sam.losses import sam_loss
from lora_sam.metrics import mask_iou
from lora_sam.promptable import PromptableModel
from lora_sam.prompts import masks_to_boxes, noisy_boxes, sample_error_points, sample_points
from lora_sam.targets import box_sample, point_sample

__all__ = ["LOSS_TERMS", "RecipeOptions", "StepResult", "interactive_step"]

LOSS_TERMS = ("focal", "dice", "iou", "total")


@dataclass(frozen=True)
class RecipeOptions:
    """The recipe's settings (``LoRASAM`` takes them as keyword arguments of the same names).

    Args:
        iterations: interactive rounds for point prompts (box prompts get one).
        point_prob: probability that a target's first prompt is a point rather than a box.
        masks_per_image: at most this many of a sample's targets per step (the first ones; the
            loader draws them at random).
        min_only: the SAM paper's loss (one target, backpropagate the best of 3 outputs only).
        focal_weight, dice_weight, iou_weight: loss weights (20, 1, 1 as in SAM).
    """

    iterations: int = 3
    point_prob: float = 0.5
    masks_per_image: int = 16
    min_only: bool = False
    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if not 0.0 <= self.point_prob <= 1.0:
            raise ValueError(f"point_prob must be in [0, 1], got {self.point_prob}")
        if self.masks_per_image < 1:
            raise ValueError(f"masks_per_image must be >= 1, got {self.masks_per_image}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RecipeOptions:
        """The options named in ``values`` (e.g. a run's hparams.yaml); other keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass
class StepResult:
    """Losses of one step, summed over prompts per (iteration, term), and the IoU of the chosen outputs."""

    terms: dict[tuple[int, str], tuple[Tensor, int]] = field(default_factory=dict)
    ious: dict[int, list[Tensor]] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)

    def add(self, iteration: int, losses: dict[str, Tensor], chosen_iou: Tensor) -> None:
        k = chosen_iou.numel()
        for name in LOSS_TERMS:
            s, n = self.terms.get((iteration, name), (0.0, 0))
            self.terms[(iteration, name)] = (s + losses[name] * k, n + k)
        self.ious.setdefault(iteration, []).append(chosen_iou)

    def mean(self, name: str, iteration: int | None = None) -> Tensor:
        pairs = [v for (it, n), v in self.terms.items() if n == name and iteration in (None, it)]
        return sum(s for s, _ in pairs) / sum(n for _, n in pairs)

    def miou(self, iteration: int) -> Tensor:
        return torch.cat(self.ious[iteration]).float().mean()

    def log_values(self, stage: str) -> dict[str, Tensor]:
        """``{stage}/{loss,focal,dice,iou}``, the same per iteration (``{stage}/it{n}/...``) and mIoU."""
        short = {"total": "loss"}
        iterations = sorted(self.ious)
        out = {f"{stage}/{short.get(n, n)}": self.mean(n) for n in LOSS_TERMS}
        for it in iterations:
            out.update({f"{stage}/it{it}/{short.get(n, n)}": self.mean(n, it) for n in LOSS_TERMS})
            out[f"{stage}/miou_it{it}"] = self.miou(it)
        out[f"{stage}/miou"] = self.miou(iterations[0])
        return out


@dataclass
class _Image:
    """One image of a batch inside the step: its embedding and every mask, with areas and boxes."""

    embedding: Tensor  # (1, ...)
    masks: Tensor  # (N, H, W) bool
    areas: Tensor  # (N,)
    boxes: Tensor  # (N, 4) XYXY
    input_size: tuple[int, int]  # (h, w) before padding


@dataclass
class _Step:
    """What every round of one step shares: the model, the options, the sampler and the sums."""

    model: PromptableModel
    options: RecipeOptions
    generator: torch.Generator
    result: StepResult


def interactive_step(
    model: PromptableModel,
    batch: Mapping[str, Any],
    generator: torch.Generator,
    options: RecipeOptions,
    *,
    keep_records: bool = False,
) -> StepResult:
    """Run the recipe on one batch (see the module docstring).

    Args:
        batch: ``data.samples.collate``'s dict: image (B, 3, H, W), input_size (B, 2), masks and
            targets (lists of (N, H, W) bool and (K,) indices), image_id.
        generator: the prompt sampler's randomness (first prompts, box noise, error points).
        keep_records: also return, per image, every round's points, labels, boxes, assigned GT
            masks, chosen prediction and targets (on the CPU), for tests and the report's figures.
    """
    images = batch["image"]
    embeddings = model.encode(images, batch["input_size"])  # (B, ...): once per image
    step = _Step(model, options, generator, StepResult())
    for b in range(images.shape[0]):
        masks = batch["masks"][b].to(images.device)
        targets = batch["targets"][b][: options.masks_per_image].to(images.device)
        if targets.numel() == 0:
            continue
        image = _Image(embedding=embeddings[b : b + 1], masks=masks, areas=masks.flatten(1).sum(1),
                       boxes=masks_to_boxes(masks), input_size=tuple(batch["input_size"][b].tolist()))
        use_point = (torch.rand(len(targets), generator=generator) < options.point_prob).to(masks.device)
        record: dict[str, Any] | None = {"image_id": batch["image_id"][b], "point": [], "box": None} \
            if keep_records else None
        if use_point.any():
            _point_rounds(step, image, targets[use_point], record)
        if (~use_point).any():
            _box_round(step, image, targets[~use_point], record)
        if record is not None:
            step.result.records.append(record)
    return step.result


def _decode_and_score(step: _Step, image: _Image, iteration: int, gt: Tensor, target: Tensor,
                      **prompts: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Decode K prompts, add their losses; returns low-res logits, the best output index, its mask."""
    low, iou_pred = step.model.decode(image.embedding, **prompts)
    logits = step.model.upscale(low, image.masks.shape[-2:])
    best = iou_pred.argmax(1)
    chosen = logits[torch.arange(len(best), device=best.device), best] > 0
    keep = gt.flatten(1).any(1)  # prompts that no mask fits are skipped (point_sample's empty answer)
    if keep.any():
        kept = (logits, iou_pred, gt, target, chosen)
        if not keep.all():  # index only when needed: each is a (K, ..., H, W) copy
            kept = tuple(t[keep] for t in kept)
        k_logits, k_iou_pred, k_gt, k_target, k_chosen = kept
        o = step.options
        losses = sam_loss(k_logits, k_iou_pred, k_target[:, None] if o.min_only else k_gt,
                          focal_weight=o.focal_weight, dice_weight=o.dice_weight, iou_weight=o.iou_weight,
                          min_only=o.min_only)
        step.result.add(iteration, losses, mask_iou(k_chosen, k_target).detach())
    return low, best, chosen


def _point_rounds(step: _Step, image: _Image, targets: Tensor, record: dict[str, Any] | None) -> None:
    target = image.masks[targets]  # (Kp, H, W)
    points = sample_points(target, step.generator)[:, None]  # (Kp, 1, 2)
    labels = torch.ones(points.shape[:2], dtype=torch.long, device=points.device)
    mask_input = None
    iterations = step.options.iterations
    for it in range(1, iterations + 1):
        gt = torch.stack([point_sample(image.masks, p, lab, areas=image.areas) for p, lab in zip(points, labels)])
        low, best, chosen = _decode_and_score(step, image, it, gt, target, points=points, labels=labels,
                                              mask_input=mask_input)
        if record is not None:
            record["point"].append({"points": points.cpu(), "labels": labels.cpu(), "gt": gt.cpu(),
                                    "pred": chosen.cpu(), "target": target.cpu()})
        if it == iterations:
            break
        new_points, new_labels = sample_error_points(chosen, target, step.generator)
        points = torch.cat([points, new_points[:, None]], dim=1)
        labels = torch.cat([labels, new_labels[:, None]], dim=1)
        rows = torch.arange(len(best), device=best.device)
        mask_input = low[rows, best][:, None].detach()  # (Kp, 1, h, w), unthresholded


def _box_round(step: _Step, image: _Image, targets: Tensor, record: dict[str, Any] | None) -> None:
    target = image.masks[targets]
    boxes = noisy_boxes(image.boxes[targets].float(), step.generator, image_size=image.input_size)
    gt = torch.stack([box_sample(image.masks, box, areas=image.areas, mask_boxes=image.boxes) for box in boxes])
    _, _, chosen = _decode_and_score(step, image, 1, gt, target, boxes=boxes)
    if record is not None:
        record["box"] = {"boxes": boxes.cpu(), "gt": gt.cpu(), "pred": chosen.cpu(), "target": target.cpu()}
