"""SAM's interactive training step as plain functions: (model, batch, generator, options) -> losses + records.

The SAM paper's recipe (Section 3 and Appendix A), per image of a batch:

- the image encoder runs once; up to ``masks_per_image`` targets get a first prompt: a
  foreground point uniform over the target, or the target's box with Gaussian noise (std 10 % of
  each side, capped at 20 px of SAM's 1024 px frame, converted to training pixels);
- outputs: one point and no mask prompt -> the 3 multimask outputs against ``point_sample``'s 3
  GT masks; several points or a mask prompt -> the single-mask output against the target; a box
  -> the 3 outputs against ``box_sample``'s masks and the single-mask output against the target,
  from one decoder pass (``box_output``); the target is always among the 3 GT masks (``include=``);
- the 3 outputs are paired with the prompt's *distinct* GT masks by the assignment of lowest total
  loss, one output each; an output left over trains its IoU prediction only (``pairing``: one
  distinct mask, as on label maps, gives the paper's min-loss; the paper's min-loss, the assignment
  over repeated masks and a fixed big-to-small order are options);
- point prompts go on for up to ``iterations`` rounds: the next point is uniform over the error
  region of the previous prediction (the output with the highest predicted IoU when 3 were
  returned), positive in a false negative, negative in a false positive; that output's
  low-resolution logits are fed back as the mask prompt. ``mask_only_iterations`` adds rounds that
  feed the logits back with no new point (the paper has 2 of 11);
- the padding of the (H, W) frame is cropped, as ``Sam.postprocess_masks`` does: losses, IoU
  targets, error regions and sampled points use only the image's ``input_size``.

Nothing here knows Lightning: ``module.LoRASAM`` calls ``interactive_step`` and logs its
``StepResult``; the report replays it with a trained model and explicit options.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import torch
from torch import Tensor

from lora_sam.models.checkpoints import SAM_RECIPE_DEFAULTS
from lora_sam.models.promptable import PromptableModel
from lora_sam.settings import MASKS_PER_IMAGE
from lora_sam.training.decoder_side import EagerDecoder, Scored, StepImage
from lora_sam.training.losses import Pairing
from lora_sam.training.metrics import mask_iou
from lora_sam.training.prompts import masks_to_boxes, noisy_boxes, sample_error_points, sample_points
from lora_sam.training.targets import box_picks, point_picks

__all__ = [
    "LOSS_TERMS", "SAM_FRAME", "RecipeOptions", "StepResult", "interactive_step", "prompt_generator"]

LOSS_TERMS = ("focal", "dice", "iou", "total")
SAM_FRAME = 1024  # the longest side of SAM's own input frame, where the paper's pixel constants live


def prompt_generator(seed: int, step: int, *, validation: bool = False, rank: int = 0) -> torch.Generator:
    """The prompt sampler of one training (or validation) step, from (seed, step, rank) alone: a resumed run
    draws the prompts it would have drawn, and DDP ranks draw their own (rank 0's stream is the
    single-process one; the CPU generator keeps 32 bits of a seed, so ranks are 100_000_007 apart).
    ``LoRASAM`` and ``lora-sam pretrain`` both use it."""
    return torch.Generator().manual_seed(seed * 7_919 + (1_000_003 if validation else 0) + step + rank * 100_000_007)


@dataclass(frozen=True)
class RecipeOptions:
    """The recipe's settings (``LoRASAM`` takes them as keyword arguments of the same names).

    Args:
        iterations: interactive rounds for point prompts (box prompts get one).
        point_prob: probability that a target's first prompt is a point rather than a box.
        masks_per_image: at most this many of a sample's targets per step (the first ones; the
            loader draws them at random).
        pairing: how the 3 outputs meet the 3 GT masks: ``distinct`` (the assignment of lowest total
            loss of the prompt's distinct GT masks, one output each; an output left over gets no mask
            loss: with one distinct mask this is the paper's min-loss, with three nested ones
            ``optimal``), ``optimal`` (the same over the 3 slots, repeated masks included), ``min`` (the
            SAM paper: every output against the target, only the best one backpropagated) or ``fixed``
            (output m against the m-th largest GT mask).
        box_output: ``both`` (one decode: the 3 outputs against ``box_sample``'s masks and SAM's
            single-mask output, the one ``SamPredictor(box=..., multimask_output=False)`` returns,
            against the target), ``multi`` (the 3 alone) or ``single`` (the single-mask output alone).
        box_noise_std: std of each box coordinate's noise, as a fraction of the box side.
        box_noise_cap: largest noise in pixels of SAM's 1024 px frame (converted per image).
        mask_only_iterations: extra rounds at the end that feed the mask prompt back without a new point.
        focal_weight, dice_weight, iou_weight: loss weights. None: the base's (``LoRASAM`` sets them from
            ``checkpoints.fine_tune_defaults``); left at None here, SAM's 20, 1, 1.
    """

    # The same names as LoRASAM's keyword arguments and hparams.yaml keys (from_mapping reads them back);
    # other dataclasses of settings (runs.demo.DemoConfig) look alike by shape only.
    iterations: int = 3
    point_prob: float = 0.5
    masks_per_image: int = MASKS_PER_IMAGE
    pairing: Pairing = "distinct"
    box_output: Literal["both", "multi", "single"] = "both"
    box_noise_std: float = 0.1
    box_noise_cap: float = 20.0
    mask_only_iterations: int = 0
    focal_weight: float | None = None
    dice_weight: float | None = None
    iou_weight: float | None = None

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if not 0.0 <= self.point_prob <= 1.0:
            raise ValueError(f"point_prob must be in [0, 1], got {self.point_prob}")
        if self.masks_per_image < 1:
            raise ValueError(f"masks_per_image must be >= 1, got {self.masks_per_image}")
        if self.pairing not in ("distinct", "optimal", "min", "fixed"):
            raise ValueError(f"pairing must be 'distinct', 'optimal', 'min' or 'fixed', got {self.pairing!r}")
        if self.box_output not in ("both", "multi", "single"):
            raise ValueError(f"box_output must be 'both', 'multi' or 'single', got {self.box_output!r}")
        if self.mask_only_iterations < 0 or self.box_noise_std < 0 or self.box_noise_cap < 0:
            raise ValueError("mask_only_iterations, box_noise_std and box_noise_cap must be >= 0")

    def loss_weights(self) -> tuple[float, float, float]:
        """(focal, dice, IoU head): a weight left at None is SAM's (``checkpoints.SAM_RECIPE_DEFAULTS``)."""
        given = (self.focal_weight, self.dice_weight, self.iou_weight)
        sam = (SAM_RECIPE_DEFAULTS[k] for k in ("focal_weight", "dice_weight", "iou_weight"))
        return tuple(float(d if w is None else w) for w, d in zip(given, sam))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RecipeOptions:
        """The options named in ``values`` (a run's hparams.yaml: its ``recipe`` group, or the flat keys of
        runs saved before the groups); other keys are ignored. Runs saved before ``pairing`` existed
        recorded ``min_only``; True reads as ``pairing="min"``."""
        if isinstance(values.get("recipe"), Mapping):
            values = values["recipe"]
        names = {f.name for f in fields(cls)}
        options = {k: v for k, v in values.items() if k in names}
        if "pairing" not in values and "min_only" in values:
            options["pairing"] = "min" if values["min_only"] else "fixed"
        return cls(**options)


@dataclass
class StepResult:
    """Losses of one step, summed over prompts per (iteration, term), and the IoU of the chosen outputs."""

    terms: dict[tuple[int, str], tuple[Tensor, int]] = field(default_factory=dict)
    ious: dict[int, list[Tensor]] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)

    def add(self, iteration: int, losses: dict[str, Tensor], chosen_iou: Tensor, *, metric: bool = True) -> None:
        """Losses of K prompts (weighted by K) and, with ``metric``, the IoU of their chosen masks."""
        k = chosen_iou.numel()
        for name in LOSS_TERMS:
            s, n = self.terms.get((iteration, name), (0.0, 0))
            self.terms[(iteration, name)] = (s + losses[name] * k, n + k)
        if metric:
            self.ious.setdefault(iteration, []).append(chosen_iou)

    def mean(self, name: str, iteration: int | None = None) -> Tensor:
        pairs = [v for (it, n), v in self.terms.items() if n == name and iteration in (None, it)]
        return sum(s for s, _ in pairs) / sum(n for _, n in pairs)

    def miou(self, iteration: int) -> Tensor:
        return torch.cat(self.ious[iteration]).float().mean()

    def log_values(self, stage: str) -> dict[str, Tensor]:
        """``{stage}/{loss,focal,dice,iou}``, the same per iteration (``{stage}/it{n}/...``) and mIoU."""
        iterations = sorted(self.ious)
        out = {_key(stage, None, n): self.mean(n) for n in LOSS_TERMS}
        for it in iterations:
            out.update({_key(stage, it, n): self.mean(n, it) for n in LOSS_TERMS})
            out[f"{stage}/miou_it{it}"] = self.miou(it)
        out[f"{stage}/miou"] = self.miou(iterations[0])
        return out

    @staticmethod
    def log_keys(stage: str, rounds: int) -> list[str]:
        """Every key ``log_values`` can give in a run of ``rounds`` decodes per point prompt, in a fixed order
        (a step logs those of the rounds it ran: box prompts and mask-only runs have fewer)."""
        keys = [_key(stage, None, n) for n in LOSS_TERMS] + [f"{stage}/miou"]
        for it in range(1, rounds + 1):
            keys += [_key(stage, it, n) for n in LOSS_TERMS] + [f"{stage}/miou_it{it}"]
        return keys


def _key(stage: str, iteration: int | None, term: str) -> str:
    name = "loss" if term == "total" else term
    return f"{stage}/{name}" if iteration is None else f"{stage}/it{iteration}/{name}"


@dataclass
class _Step:
    """What every round of one step shares: the decoder side, the options, the sampler and the sums."""

    decoder: EagerDecoder
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
    decoder: EagerDecoder | None = None,
) -> StepResult:
    """Run the recipe on one batch (see the module docstring).

    Args:
        batch: ``data.samples.collate``'s dict: image (B, 3, H, W), input_size (B, 2), masks and
            targets (lists of (N, H, W) bool and (K,) indices), image_id.
        generator: the prompt sampler's randomness (first prompts, box noise, error points).
        keep_records: also return, per image, every round's points, labels, boxes, assigned GT
            masks, which GT each output was paired with, the chosen prediction and the targets (on
            the CPU, cropped to the image), for tests and the report's figures.
        decoder: how each round's prompts are decoded and scored (``decoder_side``; default: eagerly, as they
            come; ``StaticKDecoder``: padded to ``masks_per_image`` for ``torch.compile``).
    """
    images = batch["image"]
    embeddings = model.encode(images, batch["input_size"])  # (B, ...): once per image
    step = _Step(decoder or EagerDecoder(model, options), options, generator, StepResult())
    for b in range(images.shape[0]):
        h, w = (int(v) for v in batch["input_size"][b])
        frame_masks = batch["masks"][b].to(images.device)
        targets = batch["targets"][b][: options.masks_per_image].to(images.device)
        if targets.numel() == 0:
            continue
        masks = frame_masks[:, :h, :w]
        image = StepImage(embedding=embeddings[b : b + 1], frame_masks=frame_masks, size=(h, w),
                          areas=masks.flatten(1).sum(1).float(), boxes=masks_to_boxes(masks))
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


def _add(step: _Step, iteration: int, scored: list[Scored], target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Add each set of outputs' losses (the first's chosen masks count in the step's mIoU); returns the first's
    chosen low-resolution logits, chosen mask and pairing."""
    for n, (losses, _, chosen, _) in enumerate(scored):
        step.result.add(iteration, losses, mask_iou(chosen, target).detach(), metric=n == 0)
    return scored[0][1:]


def _point_rounds(step: _Step, image: StepImage, targets: Tensor, record: dict[str, Any] | None) -> None:
    """Point prompts: round 1 one point (3 outputs), then a new error point and the mask prompt per round
    (single output), then ``mask_only_iterations`` rounds of the mask prompt alone."""
    target = image.masks[targets]  # (Kp, h, w)
    points = sample_points(target, step.generator)[:, None]  # (Kp, 1, 2)
    labels = torch.ones(points.shape[:2], dtype=torch.long, device=points.device)
    mask_input = None
    o = step.options
    rounds = o.iterations + o.mask_only_iterations
    for it in range(1, rounds + 1):
        first = it == 1
        picks = point_picks(image.masks, points, labels, image.areas, include=targets)[0] if first else None
        scored = step.decoder(image, "multi" if first else "single", picks, targets, points=points, labels=labels,
                              mask_input=mask_input)
        low_chosen, chosen, paired = _add(step, it, scored, target)
        if record is not None:
            record["point"].append({"points": points.cpu(), "labels": labels.cpu(),
                                    "gt": (image.masks[picks] if first else target[:, None]).cpu(),
                                    "paired": paired.cpu(),
                                    "pred": chosen.cpu(), "target": target.cpu(), "target_index": targets.cpu()})
        if it == rounds:
            break
        if it < o.iterations:
            new_points, new_labels = sample_error_points(chosen, target, step.generator)
            points = torch.cat([points, new_points[:, None]], dim=1)
            labels = torch.cat([labels, new_labels[:, None]], dim=1)
        mask_input = low_chosen.detach()  # (Kp, 1, h', w'), unthresholded


def _box_round(step: _Step, image: StepImage, targets: Tensor, record: dict[str, Any] | None) -> None:
    """Box prompts: one round; noise capped at ``box_noise_cap`` px of SAM's frame, in training pixels."""
    o = step.options
    target = image.masks[targets]
    h, w = image.masks.shape[-2:]
    cap = o.box_noise_cap * max(h, w) / SAM_FRAME  # the image's longest side is SAM_FRAME px in SAM's frame
    boxes = noisy_boxes(image.boxes[targets].float(), step.generator, image_size=(h, w),
                        std_fraction=o.box_noise_std, max_noise=cap)
    picks = box_picks(image.masks, boxes, image.areas, mask_boxes=image.boxes, include=targets)[0] \
        if o.box_output != "single" else None
    _, chosen, paired = _add(step, 1, step.decoder(image, o.box_output, picks, targets, boxes=boxes), target)
    if record is not None:
        record["box"] = {"boxes": boxes.cpu(), "gt": (image.masks[picks] if picks is not None else target[:, None]).cpu(),
                         "paired": paired.cpu(), "pred": chosen.cpu(), "target": target.cpu(),
                         "target_index": targets.cpu()}
