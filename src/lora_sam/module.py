"""``LoRASAM``: SAM's interactive training recipe as a LightningModule.

Per image: the image encoder runs once; up to K target masks get a first prompt, a
foreground point (GT: ``point_sample``) or the target's noisy box (GT: ``box_sample``, one
iteration); point prompts go on for up to ``iterations`` rounds, each adding a point drawn
from the error region of the output with the highest predicted IoU, reassigning the GT over
all points so far and feeding that output's low-resolution logits back as the mask prompt.
All prompts of a group (points / boxes) of one image are decoded in one call.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor

from lora_sam.lora import inject_lora, lora_state_dict
from lora_sam.losses import sam_loss
from lora_sam.metrics import mask_iou
from lora_sam.model import build_sam, decode, encode, upscale
from lora_sam.prompts import masks_to_boxes, noisy_boxes, sample_error_points, sample_points
from lora_sam.summary import parameter_summary
from lora_sam.targets import box_sample, point_sample

LOSS_TERMS = ("focal", "dice", "iou", "total")


@dataclass
class _Image:
    """One image of a batch inside the step: its embedding and every mask, with areas and boxes."""

    embedding: Tensor  # (1, C, h, w)
    masks: Tensor  # (N, H, W) bool
    areas: Tensor  # (N,)
    boxes: Tensor  # (N, 4) XYXY
    input_size: tuple[int, int]  # (h, w) before padding


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


class LoRASAM(pl.LightningModule):
    """Fine-tune SAM with LoRA (or fully) on SA-1B-style batches (see ``lora_sam.data.samples.collate``).

    Args:
        rank, alpha: LoRA rank and alpha (scaling = alpha / rank).
        model_type: ``vit_b`` / ``vit_l`` / ``vit_h`` / ``tiny``; $LORA_SAM_MODEL_TYPE overrides the default.
        checkpoint: official SAM checkpoint (None: $LORA_SAM_CHECKPOINT, then the default path;
            ``"random"``: random weights on purpose).
        image_size: training resolution (H, W), multiples of 16.
        targets: LoRA target preset (``default``, ``qkv``, ``encoder``, ``decoder``) or patterns.
        finetune: ``"lora"`` (only LoRA tensors train) or ``"full"`` (every SAM parameter trains).
        iterations: interactive rounds for point prompts (box prompts get one).
        point_prob: probability that a target's first prompt is a point rather than a box.
        masks_per_image: at most this many target masks per image and step (the loader picks them).
        lr, weight_decay, warmup_steps: AdamW with linear warm-up, then constant.
        min_only: the SAM paper's loss (one target, backpropagate the best of 3 outputs only).
        focal_weight, dice_weight, iou_weight: loss weights (20, 1, 1 as in SAM).
        on_nonfinite: ``"error"`` stops with the step named; ``"skip"`` skips that batch.
        seed: base seed of the prompt sampler (with the global step, so resumed runs reproduce).
    """

    def __init__(
        self,
        rank: int = 4,
        alpha: float = 1.0,
        *,
        model_type: str | None = None,
        checkpoint: str | None = None,
        image_size: tuple[int, int] = (160, 256),
        targets: str | list[str] = "default",
        finetune: Literal["lora", "full"] = "lora",
        dropout: float = 0.0,
        iterations: int = 3,
        point_prob: float = 0.5,
        masks_per_image: int = 16,
        lr: float = 1e-4,
        weight_decay: float = 0.01,
        warmup_steps: int = 50,
        min_only: bool = False,
        focal_weight: float = 20.0,
        dice_weight: float = 1.0,
        iou_weight: float = 1.0,
        on_nonfinite: Literal["error", "skip"] = "error",
        seed: int = 0,
    ) -> None:
        super().__init__()
        model_type = model_type or os.environ.get("LORA_SAM_MODEL_TYPE", "vit_b")
        if finetune not in ("lora", "full"):
            raise ValueError(f"finetune must be 'lora' or 'full', got {finetune!r}")
        if finetune == "lora" and (not isinstance(rank, int) or rank <= 0):
            raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        if not 0.0 <= point_prob <= 1.0:
            raise ValueError(f"point_prob must be in [0, 1], got {point_prob}")
        if on_nonfinite not in ("error", "skip"):
            raise ValueError(f"on_nonfinite must be 'error' or 'skip', got {on_nonfinite!r}")
        image_size = (int(image_size[0]), int(image_size[1]))
        self.save_hyperparameters()
        self.hparams["model_type"] = model_type
        self.sam = build_sam(model_type, checkpoint, image_size).train()
        self.lora_layers: list[str] = []
        if finetune == "lora":
            self.lora_layers = inject_lora(self.sam, rank, alpha, targets=targets, dropout=dropout)
        else:
            self.sam.requires_grad_(True)
        self.strict_loading = finetune == "full"  # LoRA checkpoints hold only the trainable tensors
        self._skipped = 0

    # ------------------------------------------------------------------ steps

    def _generator(self, stage: str, batch_idx: int) -> torch.Generator:
        step = self.global_step if stage == "train" else batch_idx
        offset = 0 if stage == "train" else 1_000_003
        return torch.Generator().manual_seed(self.hparams.seed * 7_919 + offset + step)

    def _loss(self, logits: Tensor, iou_pred: Tensor, gt: Tensor, target: Tensor) -> dict[str, Tensor]:
        hp = self.hparams
        return sam_loss(logits, iou_pred, target[:, None] if hp.min_only else gt,
                        focal_weight=hp.focal_weight, dice_weight=hp.dice_weight, iou_weight=hp.iou_weight,
                        min_only=hp.min_only)

    def interactive_step(
        self, batch: dict[str, Any], generator: torch.Generator, *, keep_records: bool = False
    ) -> StepResult:
        """Run the recipe on one batch (see the module docstring).

        ``keep_records=True`` also returns, per image, every round's points, labels, boxes, assigned
        GT masks, chosen prediction and targets (on the CPU), for tests and the report's figures.
        """
        images = batch["image"]
        embeddings = encode(self.sam, images, batch["input_size"])  # (B, C, h, w): once per image
        result = StepResult()
        for b in range(images.shape[0]):
            masks = batch["masks"][b].to(images.device)
            targets = batch["targets"][b].to(images.device)
            if targets.numel() == 0:
                continue
            image = _Image(embedding=embeddings[b : b + 1], masks=masks, areas=masks.flatten(1).sum(1),
                           boxes=masks_to_boxes(masks), input_size=tuple(batch["input_size"][b].tolist()))
            use_point = (torch.rand(len(targets), generator=generator) < self.hparams.point_prob).to(masks.device)
            record: dict[str, Any] | None = {"image_id": batch["image_id"][b], "point": [], "box": None} \
                if keep_records else None
            if use_point.any():
                self._point_rounds(image, targets[use_point], generator, result, record)
            if (~use_point).any():
                self._box_round(image, targets[~use_point], generator, result, record)
            if record is not None:
                result.records.append(record)
        return result

    def _decode_and_score(self, image: _Image, result: StepResult, iteration: int, gt: Tensor, target: Tensor,
                          **prompts: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Decode K prompts, add their losses; returns low-res logits, the best output index, its mask."""
        low, iou_pred = decode(self.sam, image.embedding, **prompts)
        logits = upscale(low, image.masks.shape[-2:])
        best = iou_pred.argmax(1)
        chosen = logits[torch.arange(len(best), device=best.device), best] > 0
        keep = gt.flatten(1).any(1)  # prompts that no mask fits are skipped (point_sample's empty answer)
        if keep.any():
            kept = (logits, iou_pred, gt, target, chosen)
            if not keep.all():  # index only when needed: each is a (K, ..., H, W) copy
                kept = tuple(t[keep] for t in kept)
            k_logits, k_iou_pred, k_gt, k_target, k_chosen = kept
            losses = self._loss(k_logits, k_iou_pred, k_gt, k_target)
            result.add(iteration, losses, mask_iou(k_chosen, k_target).detach())
        return low, best, chosen

    def _point_rounds(self, image: _Image, targets: Tensor, generator: torch.Generator, result: StepResult,
                      record: dict[str, Any] | None) -> None:
        target = image.masks[targets]  # (Kp, H, W)
        points = sample_points(target, generator)[:, None]  # (Kp, 1, 2)
        labels = torch.ones(points.shape[:2], dtype=torch.long, device=points.device)
        mask_input = None
        for it in range(1, self.hparams.iterations + 1):
            gt = torch.stack([point_sample(image.masks, p, lab, areas=image.areas) for p, lab in zip(points, labels)])
            low, best, chosen = self._decode_and_score(image, result, it, gt, target, points=points, labels=labels,
                                                       mask_input=mask_input)
            if record is not None:
                record["point"].append({"points": points.cpu(), "labels": labels.cpu(), "gt": gt.cpu(),
                                        "pred": chosen.cpu(), "target": target.cpu()})
            if it == self.hparams.iterations:
                break
            new_points, new_labels = sample_error_points(chosen, target, generator)
            points = torch.cat([points, new_points[:, None]], dim=1)
            labels = torch.cat([labels, new_labels[:, None]], dim=1)
            rows = torch.arange(len(best), device=best.device)
            mask_input = low[rows, best][:, None].detach()  # (Kp, 1, 4h, 4w), unthresholded

    def _box_round(self, image: _Image, targets: Tensor, generator: torch.Generator, result: StepResult,
                   record: dict[str, Any] | None) -> None:
        target = image.masks[targets]
        boxes = noisy_boxes(image.boxes[targets].float(), generator, image_size=image.input_size)
        gt = torch.stack([box_sample(image.masks, box, areas=image.areas, mask_boxes=image.boxes) for box in boxes])
        _, _, chosen = self._decode_and_score(image, result, 1, gt, target, boxes=boxes)
        if record is not None:
            record["box"] = {"boxes": boxes.cpu(), "gt": gt.cpu(), "pred": chosen.cpu(), "target": target.cpu()}

    def _nothing_to_learn(self, stage: str) -> Tensor | None:
        """What a step without a usable loss returns: ``None`` (Lightning skips the batch), except when
        training under DDP, where every rank must run a backward (the gradient all-reduce waits for all
        of them): a zero loss that reaches every trainable parameter, so this rank adds zero gradients."""
        if stage != "train" or self._trainer is None or self.trainer.world_size <= 1:
            return None
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.stack([p.sum() for p in params]).sum() * 0.0

    def _shared_step(self, batch: dict[str, Any], batch_idx: int, stage: str) -> Tensor | None:
        self._skipped += len(batch.get("skipped", ()))
        if batch["image"].shape[0] == 0:
            return self._nothing_to_learn(stage)
        result = self.interactive_step(batch, self._generator(stage, batch_idx))
        if not result.terms:
            return self._nothing_to_learn(stage)
        total = result.mean("total")
        if not torch.isfinite(total):
            message = (f"non-finite {stage} loss ({float(total)}) at global step {self.global_step}, "
                       f"batch {batch_idx}, images {batch['image_id']}")
            if self.hparams.on_nonfinite == "error":
                raise FloatingPointError(message + "; lower the learning rate or set on_nonfinite='skip'")
            warnings.warn(message + ": batch skipped", RuntimeWarning, stacklevel=2)
            return self._nothing_to_learn(stage)
        batch_size = batch["image"].shape[0]
        on_step = stage == "train"
        self.log_dict({k: v.detach() for k, v in result.log_values(stage).items()}, on_step=on_step, on_epoch=True,
                      batch_size=batch_size, sync_dist=not on_step)
        self.log(f"{stage}_loss", total.detach(), on_step=on_step, on_epoch=True, prog_bar=True,
                 batch_size=batch_size, sync_dist=not on_step, logger=False)
        return total

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        return self._shared_step(batch, batch_idx, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, batch_idx, "val")

    def on_train_epoch_end(self) -> None:
        if self._skipped:
            warnings.warn(f"{self._skipped} bad samples were skipped this epoch (see the warnings naming them); "
                          f"run 'lora-sam check-data ROOT' for a full report", RuntimeWarning, stacklevel=1)
            self._skipped = 0

    # ------------------------------------------------------------ optimiser

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        warmup = max(int(self.hparams.warmup_steps), 0)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_fit_start(self) -> None:
        if self.trainer.is_global_zero:
            mode = (f"LoRA rank {self.hparams.rank}, alpha {self.hparams.alpha:g}, {len(self.lora_layers)} layers"
                    if self.hparams.finetune == "lora" else "full fine-tuning")
            print(f"lora_sam: {self.hparams.model_type} at {tuple(self.hparams.image_size)}, {mode}")
            print(parameter_summary(self.sam))

    # ---------------------------------------------------------- checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.hparams.finetune == "lora":
            keep = {f"sam.{k}" for k in lora_state_dict(self.sam)}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.hparams.finetune == "lora":
            expected = {f"sam.{k}": v.shape for k, v in lora_state_dict(self.sam).items()}
            saved = checkpoint["state_dict"]
            missing = sorted(set(expected) - set(saved))
            wrong = sorted(k for k in set(expected) & set(saved) if saved[k].shape != expected[k])
            if missing or wrong:
                example = (missing or wrong)[0]
                raise ValueError(f"checkpoint does not hold this model's LoRA tensors ({len(missing)} missing, "
                                 f"{len(wrong)} of another shape, e.g. {example}): it was saved with other "
                                 f"LoRA targets or rank (saved hyperparameters: {checkpoint.get('hyper_parameters')})")

    def on_train_end(self) -> None:
        out = Path(self.trainer.log_dir or self.trainer.default_root_dir)  # log_dir is collective under DDP
        if self.trainer.is_global_zero:
            path = self.export_weights(out / ("adapter.safetensors" if self.hparams.finetune == "lora" else "model.pth"))
            print(f"lora_sam: wrote {path}")

    def export_weights(self, path: str | os.PathLike) -> Path:
        """LoRA: the adapter (``.safetensors``, LoRA tensors only). Full: the whole state dict at the
        training resolution (``.pth``; ``build_sam(model_type, path, image_size)`` loads it)."""
        from lora_sam.adapter import save_adapter
        from lora_sam.io import atomic_path

        path = Path(path)
        if self.hparams.finetune == "lora":
            save_adapter(self.sam, path, targets=self.hparams.targets, model_type=self.hparams.model_type,
                         image_size=self.hparams.image_size)
        else:
            with atomic_path(path) as tmp:
                torch.save({k: v.detach().cpu() for k, v in self.sam.state_dict().items()}, tmp)
        return path

