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
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

import torch
from torch import Tensor

from lora_sam.models.checkpoints import SAM_RECIPE_DEFAULTS
from lora_sam.models.families import family_of
from lora_sam.models.promptable import PromptableModel
from lora_sam.settings import MASKS_PER_IMAGE
from lora_sam.training.decoder_side import EagerDecoder, Scored, StepImage
from lora_sam.training.losses import Pairing
from lora_sam.training.metrics import mask_iou
from lora_sam.training.prompts import masks_to_boxes, noisy_boxes, sample_error_points, sample_points
from lora_sam.training.targets import box_picks, point_picks

__all__ = [
    "LOSS_TERMS", "SAM_FRAME", "SAM_V1_RULES", "RecipeOptions", "StepResult", "interactive_step", "prompt_generator"]

LOSS_TERMS = ("focal", "dice", "iou", "object", "total")
SAM_FRAME = 1024  # the longest side of SAM's own input frame, where the paper's pixel constants live
SAM_V1_RULES: dict[str, Any] = {
    "iterations": 3, "pairing": "distinct", "box_output": "both", "box_iterations": 1, "gt_click_prob": 0.0,
    "iou_loss": "mse", "object_weight": 0.0}
"""The recipe's rules for SAM v1 (the SAM paper's, with ``distinct`` pairing): 3 rounds for points, a box once
with its 3 outputs and the single one, corrections from the error region only, the IoU head's MSE, no object
score. A family may name its own (``Family.recipe_rules``); a rule set in ``RecipeOptions`` wins."""


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
        iterations: decodes of a point prompt: the first point, then a correction click per round (SAM v1: 3;
            SAM 2.1: 8, Meta's first prompt and 7 corrections).
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
        box_iterations: decodes of a box prompt: the box, then correction clicks with the box kept (SAM v1: 1;
            SAM 2.1: 8). Correction rounds decode the single-mask output.
        gt_click_prob: probability that a round's correction clicks are drawn uniformly from the target (a
            positive click) instead of from the error region (SAM 2.1: 0.1, Meta's
            ``prob_to_sample_from_gt_for_train``; one draw per round, as Meta draws one per frame).
        iou_loss: ``mse`` (SAM) or ``l1`` (SAM 2.1, Meta's ``iou_use_l1_loss``) between the IoU head and the
            true IoU of each output.
        object_weight: weight of the object-score loss (binary cross-entropy of the object-score logit against
            "the target has a pixel"; SAM 2.1: 1, Meta's ``loss_class``; families without the head: 0).

    A rule left at None (``iterations``, ``pairing``, ``box_output``, ``box_iterations``, ``gt_click_prob``,
    ``iou_loss``, ``object_weight``) is the model family's: ``with_rules`` fills it (``LoRASAM`` and
    ``interactive_step`` do).
    """

    # The same names as LoRASAM's keyword arguments and hparams.yaml keys (from_mapping reads them back);
    # other dataclasses of settings (runs.demo.DemoConfig) look alike by shape only. A rule left at None is the
    # family's (``Family.recipe_rules``: SAM 2.1 takes Meta's training config), else SAM v1's (``SAM_V1_RULES``).
    iterations: int | None = None
    point_prob: float = 0.5
    masks_per_image: int = MASKS_PER_IMAGE
    pairing: Pairing | None = None
    box_output: Literal["both", "multi", "single"] | None = None
    box_noise_std: float = 0.1
    box_noise_cap: float = 20.0
    mask_only_iterations: int = 0
    focal_weight: float | None = None
    dice_weight: float | None = None
    iou_weight: float | None = None
    box_iterations: int | None = None
    gt_click_prob: float | None = None
    iou_loss: Literal["mse", "l1"] | None = None
    object_weight: float | None = None

    def __post_init__(self) -> None:
        if self.iterations is not None and self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if self.box_iterations is not None and self.box_iterations < 1:
            raise ValueError(f"box_iterations must be >= 1, got {self.box_iterations}")
        for name in ("point_prob", "gt_click_prob"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.masks_per_image < 1:
            raise ValueError(f"masks_per_image must be >= 1, got {self.masks_per_image}")
        if self.pairing not in (None, "distinct", "optimal", "min", "fixed"):
            raise ValueError(f"pairing must be 'distinct', 'optimal', 'min' or 'fixed', got {self.pairing!r}")
        if self.box_output not in (None, "both", "multi", "single"):
            raise ValueError(f"box_output must be 'both', 'multi' or 'single', got {self.box_output!r}")
        if self.iou_loss not in (None, "mse", "l1"):
            raise ValueError(f"iou_loss must be 'mse' or 'l1', got {self.iou_loss!r}")
        if self.mask_only_iterations < 0 or self.box_noise_std < 0 or self.box_noise_cap < 0 \
                or (self.object_weight is not None and self.object_weight < 0):
            raise ValueError("mask_only_iterations, box_noise_std, box_noise_cap and object_weight must be >= 0")

    def unset_rules(self) -> list[str]:
        """The rules (``SAM_V1_RULES``' keys) left at None: the family's defaults fill them."""
        return [k for k in SAM_V1_RULES if getattr(self, k) is None]

    def with_rules(self, rules: Mapping[str, Any] | None = None) -> RecipeOptions:
        """The options with every rule left at None taken from ``rules`` (a family's ``recipe_rules``), then from
        SAM v1's (``SAM_V1_RULES``); set rules are kept."""
        given = {**SAM_V1_RULES, **(rules or {})}
        return replace(self, **{k: given[k] for k in self.unset_rules()})

    def for_model(self, model: PromptableModel) -> RecipeOptions:
        """The options with the rules left at None taken from ``model``'s family (``with_rules``)."""
        return self.with_rules(family_of(model.module).recipe_rules) if self.unset_rules() else self

    def loss_weights(self) -> tuple[float, float, float]:
        """(focal, dice, IoU head): a weight left at None is SAM's (``checkpoints.SAM_RECIPE_DEFAULTS``)."""
        given = (self.focal_weight, self.dice_weight, self.iou_weight)
        sam = (SAM_RECIPE_DEFAULTS[k] for k in ("focal_weight", "dice_weight", "iou_weight"))
        return tuple(float(d if w is None else w) for w, d in zip(given, sam))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RecipeOptions:
        """The options named in ``values`` (a run's hparams.yaml: its ``recipe`` group, or the flat keys of
        runs saved before the groups); other keys are ignored. Runs saved before ``pairing`` existed
        recorded ``min_only``; True reads as ``pairing="min"``. Runs saved before the families' rules existed
        (no ``iou_loss``) trained by SAM v1's, and read so."""
        if isinstance(values.get("recipe"), Mapping):
            values = values["recipe"]
        names = {f.name for f in fields(cls)}
        options = {k: v for k, v in values.items() if k in names}
        if "pairing" not in values and "min_only" in values:
            options["pairing"] = "min" if values["min_only"] else "fixed"
        if "iterations" in values and "iou_loss" not in values:  # saved before the families' rules: SAM v1's
            options = {**SAM_V1_RULES, **{k: v for k, v in options.items() if v is not None}}
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
        for name in (n for n in LOSS_TERMS if n in losses):  # "object" only where the family has the head
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
        """``{stage}/{loss,focal,dice,iou}`` (and ``object`` where it is trained), the same per iteration (``{stage}/it{n}/...``) and mIoU."""
        iterations = sorted(self.ious)
        names = [n for n in LOSS_TERMS if any(name == n for _, name in self.terms)]
        out = {_key(stage, None, n): self.mean(n) for n in names}
        for it in iterations:
            out.update({_key(stage, it, n): self.mean(n, it) for n in names})
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
    options = options.for_model(model)
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


def _rounds(step: _Step, image: StepImage, targets: Tensor, rounds: int, first: str, prompts: dict[str, Tensor],
            record: list[dict[str, Any]] | None) -> None:
    """The rounds of K prompts: the first decode (``first``: ``multi`` for one point, the box's ``box_output``),
    then a correction click per round with the previous chosen logits as the mask prompt (single output), then
    ``mask_only_iterations`` rounds of the mask prompt alone (points only)."""
    o = step.options
    target = image.masks[targets]  # (K, h, w)
    points = prompts.get("points")
    labels = prompts.get("labels")
    boxes = prompts.get("boxes")
    mask_input = None
    for it in range(1, rounds + 1):
        mode = first if it == 1 else "single"
        picks = None
        if mode != "single":
            picks = (point_picks(image.masks, points, labels, image.areas, include=targets) if boxes is None else
                     box_picks(image.masks, boxes, image.areas, mask_boxes=image.boxes, include=targets))[0]
        scored = step.decoder(image, mode, picks, targets, points=points, labels=labels, boxes=boxes,
                              mask_input=mask_input)
        low_chosen, chosen, paired = _add(step, it, scored, target)
        if record is not None:
            record.append({"points": None if points is None else points.cpu(),
                           "labels": None if labels is None else labels.cpu(),
                           "boxes": None if boxes is None else boxes.cpu(),
                           "gt": (image.masks[picks] if picks is not None else target[:, None]).cpu(),
                           "paired": paired.cpu(), "pred": chosen.cpu(), "target": target.cpu(),
                           "target_index": targets.cpu()})
        if it == rounds:
            break
        if boxes is None and it >= o.iterations:  # a mask-only round: no new click
            mask_input = low_chosen.detach()
            continue
        from_gt = bool(o.gt_click_prob) and torch.rand((), generator=step.generator).item() < o.gt_click_prob
        new_points, new_labels = sample_error_points(torch.zeros_like(chosen) if from_gt else chosen, target,
                                                     step.generator)
        points = new_points[:, None] if points is None else torch.cat([points, new_points[:, None]], dim=1)
        labels = new_labels[:, None] if labels is None else torch.cat([labels, new_labels[:, None]], dim=1)
        mask_input = low_chosen.detach()  # (K, 1, h', w'), unthresholded


def _point_rounds(step: _Step, image: StepImage, targets: Tensor, record: dict[str, Any] | None) -> None:
    """Point prompts: one point uniform over the target (3 outputs), then ``iterations - 1`` correction rounds and
    ``mask_only_iterations`` rounds of the mask prompt alone."""
    points = sample_points(image.masks[targets], step.generator)[:, None]  # (Kp, 1, 2)
    labels = torch.ones(points.shape[:2], dtype=torch.long, device=points.device)
    o = step.options
    _rounds(step, image, targets, o.iterations + o.mask_only_iterations, "multi", {"points": points, "labels": labels},
            None if record is None else record["point"])


def _box_round(step: _Step, image: StepImage, targets: Tensor, record: dict[str, Any] | None) -> None:
    """Box prompts: noise capped at ``box_noise_cap`` px of SAM's frame, in training pixels; the box decoded by
    ``box_output``, then ``box_iterations - 1`` correction rounds with the box kept."""
    o = step.options
    h, w = image.masks.shape[-2:]
    cap = o.box_noise_cap * max(h, w) / SAM_FRAME  # the image's longest side is SAM_FRAME px in SAM's frame
    boxes = noisy_boxes(image.boxes[targets].float(), step.generator, image_size=(h, w),
                        std_fraction=o.box_noise_std, max_noise=cap)
    rounds: list[dict[str, Any]] | None = None if record is None else []
    _rounds(step, image, targets, o.box_iterations, o.box_output, {"boxes": boxes}, rounds)
    if record is not None:
        record["box"], record["box_rounds"] = rounds[0], rounds  # type: ignore[index]
