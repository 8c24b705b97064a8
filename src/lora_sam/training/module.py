"""``LoRASAM``: a thin LightningModule over SAM's interactive training recipe (``lora_sam.training.recipe``).

It builds SAM (``model.build_sam``), wraps it with LoRA or unfreezes it, calls
``recipe.interactive_step`` on every batch, logs each loss term, and owns the optimiser and
the checkpoints (LoRA runs keep only the trainable tensors).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor

from lora_sam.io import atomic_path
from lora_sam.lora import LoRAOptions, deprecated_targets, inject_lora, lora_state_dict, resolve_layers
from lora_sam.lora.adapter import save_adapter
from lora_sam.lora.summary import parameter_summary
from lora_sam.models import checkpoints
from lora_sam.models.families import Family, family_of, resolve_model_type, unfreeze
from lora_sam.settings import as_group, to_dict
from lora_sam.training.decoder_side import StaticKDecoder
from lora_sam.training.options import ComputeOptions, OptimOptions
from lora_sam.training.recipe import LOSS_TERMS, RecipeOptions, StepResult, interactive_step, prompt_generator

__all__ = ["LOSS_TERMS", "ComputeOptions", "LoRASAM", "OptimOptions", "StepResult"]



_GROUPS: dict[str, type] = {"lora": LoRAOptions, "recipe": RecipeOptions, "optim": OptimOptions,
                            "compute": ComputeOptions}


def _settings(rank: int | None, alpha: float | None, groups: dict[str, Any], flat: dict[str, Any]) -> dict[str, Any]:
    """``LoRASAM``'s four groups, with any of their fields given flat (``LoRASAM(4, 1, lr=1e-3)``, and
    hparams.yaml files written before the groups) folded in; a flat field wins over its group's."""
    flat = dict(flat)
    if "targets" in flat:  # the LoRA layer patterns' old name
        flat["layers"] = deprecated_targets(flat.pop("layers", None), flat.pop("targets"), "LoRASAM")
    flat.update({k: v for k, v in (("rank", rank), ("alpha", alpha)) if v is not None})
    if "min_only" in flat and "pairing" not in flat:  # runs saved before ``pairing`` existed
        flat["pairing"] = "min" if flat.pop("min_only") else "fixed"
    out = {name: as_group(cls, groups[name]) for name, cls in _GROUPS.items()}
    for name, cls in _GROUPS.items():
        mine = {f.name for f in fields(cls)}
        out[name] = replace(out[name], **{k: flat.pop(k) for k in list(flat) if k in mine})
    if flat:
        raise TypeError(f"LoRASAM got unknown options {sorted(flat)}; its settings are the fields of "
                        f"LoRAOptions, RecipeOptions, OptimOptions and ComputeOptions")
    return out


def _with_base_defaults(model_type: str, checkpoint: str | None, finetune: str, recipe: RecipeOptions,
                        optim: OptimOptions) -> tuple[RecipeOptions, OptimOptions]:
    """The fine-tuning settings (``checkpoints.FINE_TUNE_KEYS``) left at None taken from the base's defaults;
    says which it took and from where."""
    given = {**{k: getattr(optim, k) for k in ("lr", "warmup_steps")},
             **{k: getattr(recipe, k) for k in checkpoints.FINE_TUNE_KEYS if hasattr(recipe, k)}}
    unset = [k for k in checkpoints.FINE_TUNE_KEYS if given[k] is None]
    if unset:
        defaults, source = checkpoints.fine_tune_defaults(model_type, checkpoint)
        given.update({k: defaults[k][finetune] if k == "lr" else defaults[k] for k in unset})
        shown = ", ".join(f"{k} {given[k]:g}" for k in unset)
        rank_zero_info(f"lora_sam: defaults from {source}: {shown} (explicit arguments win)")
    optim = replace(optim, lr=given.pop("lr"), warmup_steps=given.pop("warmup_steps"))
    return replace(recipe, **given), optim


def _with_family_rules(family: Family, recipe: RecipeOptions) -> RecipeOptions:
    """The recipe's rules left at None taken from the family's (SAM 2.1: Meta's training config), then SAM v1's;
    says which it took and from where. An object-score loss on a family without the head is an error."""
    if recipe.object_weight and not family.object_score:
        raise ValueError(f"object_weight={recipe.object_weight:g}: the {family.name} family has no object-score "
                         f"head; leave object_weight at 0 (or None)")
    unset = recipe.unset_rules()
    resolved = recipe.with_rules(family.recipe_rules)
    if unset:
        source = ("Meta's SAM 2.1 training config (sam2.1_hiera_b+_MOSE_finetune.yaml)" if family.recipe_rules
                  else "the SAM paper's recipe")
        shown = ", ".join(f"{k} {getattr(resolved, k)}" for k in unset)
        rank_zero_info(f"lora_sam: {family.name} recipe rules from {source}: {shown} (explicit arguments win)")
    return resolved


class LoRASAM(pl.LightningModule):
    """Fine-tune SAM with LoRA (or fully) on SA-1B-style batches (see ``lora_sam.data.samples.collate``).

    The settings come in four groups, each a frozen dataclass documented where it lives:
    ``lora.LoRAOptions`` (rank, alpha, layers, dropout), ``recipe.RecipeOptions`` (iterations,
    point_prob, masks_per_image, pairing, box_output, box noise, mask_only_iterations, the loss
    weights), ``OptimOptions`` (lr, weight_decay, warmup_steps, final_lr_fraction) and ``ComputeOptions``
    (grad_checkpointing, fused_attention, on_nonfinite). Any of their fields may also be given flat
    (``LoRASAM(4, 1, lr=1e-3, grad_checkpointing=True)``); ``lora-sam fit`` reads them as
    ``--model.recipe.iterations 2`` or ``--model.compute.grad_checkpointing true``. The learning rate, the warm-up and the loss weights left at None
    come from the base (``checkpoints.fine_tune_defaults``): SAM's 20, 1, 1 for Meta's weights; the
    built-in base's model card for it (measured for it: it was pretrained without the focal term).
    A run prints which defaults it took and from where; an explicit value always wins.

    Args:
        rank, alpha: LoRA rank and alpha (scaling = alpha / rank); None: ``lora``'s.
        model_type: ``vit_b`` / ``vit_l`` / ``vit_h`` / ``tiny`` (SAM v1), or a SAM 2.1 type (``sam2.1_hiera_t`` / ``_s`` /
            ``_b+`` / ``_l``, ``sam2.1_mini``; ``lora_sam.models.sam2_1.model``); $LORA_SAM_MODEL_TYPE overrides the default.
        checkpoint: official SAM checkpoint (None: $LORA_SAM_CHECKPOINT, then the default path; for
            ``tiny``, the built-in base, announced; ``"random"``: random weights on purpose;
            ``"builtin"``: the weights shipped in the package).
        image_size: training resolution (H, W), multiples of 16 (SAM v1; default 160x256); SAM 2.1 model types
            take a square side, a multiple of 32 (default 224x224). None: the family's default.
        finetune: ``"lora"`` (only LoRA tensors train) or ``"full"`` (every SAM parameter trains).
        lora, recipe, optim: the settings groups (a dict reads as the dataclass of the same fields).
        compute: how a step is computed (``ComputeOptions``: activation checkpointing, fused attention, what a
            non-finite loss does).
        seed: base seed of the prompt sampler (with the global step, so resumed runs reproduce).
        **given: fields of the groups given flat (and the old name ``targets`` of ``layers``).
    """

    def __init__(
        self,
        rank: int | None = None,
        alpha: float | None = None,
        *,
        model_type: str | None = None,
        checkpoint: str | None = None,
        image_size: tuple[int, int] | None = None,
        finetune: Literal["lora", "full"] = "lora",
        lora: LoRAOptions = LoRAOptions(),
        recipe: RecipeOptions = RecipeOptions(),
        optim: OptimOptions = OptimOptions(),
        compute: ComputeOptions = ComputeOptions(),
        seed: int = 0,
        **given: Any,
    ) -> None:
        super().__init__()
        model_type = resolve_model_type(model_type)
        if finetune not in ("lora", "full"):
            raise ValueError(f"finetune must be 'lora' or 'full', got {finetune!r}")
        groups = _settings(rank, alpha, {"lora": lora, "recipe": recipe, "optim": optim, "compute": compute}, given)
        self.lora_options: LoRAOptions = groups["lora"]
        self.compute: ComputeOptions = groups["compute"]
        family = family_of(model_type)  # the model is reached through its family's PromptableModel only
        recipe = _with_family_rules(family, groups["recipe"])
        self.recipe, self.optim = _with_base_defaults(model_type, checkpoint, finetune, recipe, groups["optim"])
        image_size = tuple(int(s) for s in (image_size or family.default_size(model_type)))
        # hparams.yaml holds what the run used, each group as its dict (``settings.as_group`` reads it back)
        self.save_hyperparameters({
            "model_type": model_type, "checkpoint": checkpoint, "image_size": list(image_size),
            "finetune": finetune, "lora": to_dict(self.lora_options), "recipe": to_dict(self.recipe),
            "optim": to_dict(self.optim), "compute": to_dict(self.compute), "seed": seed})
        if checkpoint is None and model_type in checkpoints.BUILTIN_FILES \
                and checkpoints.resolve_checkpoint(model_type, None) is not None:
            rank_zero_info(f"lora_sam: no checkpoint given: {model_type} starts from the built-in base "
                           f"({checkpoints.builtin_checkpoint(model_type)}; pretrained here on synthetic scenes, not Meta's "
                           f"weights: see MODEL_CARD.md beside it)")
        self.sam = family.build(model_type, checkpoint, image_size).train()
        self.promptable = family.wrap(self.sam)
        self.lora_layers: list[str] = []
        if finetune == "lora":
            o = self.lora_options
            layers = resolve_layers(o.layers, family.presets(model_type))
            self.lora_layers = inject_lora(self.sam, o.rank, o.alpha, layers, dropout=o.dropout)
        else:
            unfreeze(self.sam)  # every weight but the family's frozen parts (SAM 2.1: the memory modules)
        if family.compute is not None:
            family.compute(self.sam, self.compute.grad_checkpointing, self.compute.fused_attention)
        elif self.compute.grad_checkpointing:
            raise ValueError(f"the {family.name} family has no activation checkpointing (grad_checkpointing)")
        self.decoder = StaticKDecoder(self.promptable, self.recipe) if self.compute.compile_decoder else None
        self.strict_loading = finetune == "full"  # LoRA checkpoints hold only the trainable tensors
        self._skipped = 0
        self._val_sums: dict[str, tuple[Tensor, int]] = {}

    def set_lr(self, lr: float) -> None:
        """Train with ``lr`` (``lora-sam fit --lr``'s number or its finder's suggestion), recorded in hparams.yaml."""
        self.optim = replace(self.optim, lr=float(lr))
        for hparams in (self.hparams, self._hparams_initial):  # the one the run uses, the one hparams.yaml records
            hparams["optim"] = to_dict(self.optim)

    # ------------------------------------------------------------------ steps

    def _generator(self, stage: str, batch_idx: int) -> torch.Generator:
        """The prompt sampler of a step: from (seed, stage, step, rank), so a resumed run draws the prompts it
        would have drawn, and DDP ranks draw their own (rank 0's stream is the single-process one; the CPU
        generator keeps 32 bits of a seed, so ranks are 100_000_007 apart)."""
        step = self.global_step if stage == "train" else batch_idx
        rank = self.global_rank if self._trainer is not None else 0
        return prompt_generator(self.hparams.seed, step, validation=stage != "train", rank=rank)

    def interactive_step(
        self, batch: dict[str, Any], generator: torch.Generator, *, keep_records: bool = False
    ) -> StepResult:
        """``recipe.interactive_step`` on this module's SAM with its options."""
        return interactive_step(self.promptable, batch, generator, self.recipe, keep_records=keep_records,
                                decoder=self.decoder)

    def _world_size(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    def _touch_every_parameter(self) -> Tensor:
        """0 x the sum of every trainable parameter: added to a loss, it reaches every parameter with a zero
        gradient, so DDP's gradient all-reduce finds each one in every step's graph (a prompt encoder
        layer that a step's prompts did not use, say the mask-prompt convs in a step of boxes only)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.stack([p.sum() for p in params]).sum() * 0.0

    def _nothing_to_learn(self, stage: str) -> Tensor | None:
        """What a step without a usable loss returns: ``None`` (Lightning skips the batch), except when
        training under DDP, where every rank must run a backward (the gradient all-reduce waits for all
        of them): a zero loss that reaches every trainable parameter, so this rank adds zero gradients."""
        if stage != "train" or self._world_size() <= 1:
            return None
        return self._touch_every_parameter()

    def _nonfinite_ranks(self, total: Tensor) -> list[int]:
        """The ranks whose loss is not finite, the same list on every rank (one all-gather under DDP)."""
        finite = torch.isfinite(total.detach()).reshape(1)
        if self._world_size() > 1:
            finite = self.all_gather(finite).reshape(-1)
        return [r for r, ok in enumerate(finite.tolist()) if not ok]

    def _shared_step(self, batch: dict[str, Any], batch_idx: int, stage: str) -> Tensor | None:
        self._skipped += len(batch.get("skipped", ()))
        distributed = self._world_size() > 1
        result = self.interactive_step(batch, self._generator(stage, batch_idx)) if batch["image"].shape[0] else None
        if result is None or not result.terms:
            if distributed:  # the others may check their loss: take part in the same collective
                self._nonfinite_ranks(torch.zeros((), device=self.device))
            return self._nothing_to_learn(stage)
        total = result.mean("total")
        bad = self._nonfinite_ranks(total)
        if bad:
            where = f" on rank {', '.join(map(str, bad))} of {self._world_size()}" if distributed else ""
            message = (f"non-finite {stage} loss{where} at global step {self.global_step}, batch {batch_idx}"
                       + ("" if distributed else f", images {batch['image_id']}"))
            if self.compute.on_nonfinite == "error":  # every rank raises the same error: none waits for the others
                raise FloatingPointError(message + "; lower the learning rate or set on_nonfinite='skip'")
            warnings.warn(message + ": batch skipped" + (" on every rank" if distributed else ""), RuntimeWarning,
                          stacklevel=2)
            return self._nothing_to_learn(stage)
        batch_size = batch["image"].shape[0]
        values = {k: v.detach() for k, v in result.log_values(stage).items()}
        if stage == "train":
            self.log_dict(values, on_step=True, on_epoch=True, batch_size=batch_size)
            self.log("train_loss", total.detach(), on_step=True, on_epoch=True, prog_bar=True,
                     batch_size=batch_size, logger=False)
            return total + self._touch_every_parameter() if distributed else total
        for key, value in values.items():  # summed here, reduced over ranks once, at the epoch's end
            s, n = self._val_sums.get(key, (0.0, 0))
            self._val_sums[key] = (s + value.double() * batch_size, n + batch_size)
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

    def on_validation_epoch_start(self) -> None:
        self._val_sums = {}

    def on_validation_epoch_end(self) -> None:
        """Each ``val/...`` key as the mean over the epoch's images, weighted by images as Lightning's
        ``on_epoch`` mean is, over every rank: one all-reduce of a fixed list of keys, so ranks whose
        images drew other prompt kinds (a rank of boxes only has no ``val/it2/...``) still agree."""
        keys = StepResult.log_keys("val", max(self.recipe.iterations + self.recipe.mask_only_iterations,
                                              self.recipe.box_iterations))
        sums = torch.zeros(len(keys), 2, dtype=torch.float64, device=self.device)
        for i, key in enumerate(keys):
            if key in self._val_sums:
                s, n = self._val_sums[key]
                sums[i, 0], sums[i, 1] = s, n
        if self._world_size() > 1:
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        values = {key: (sums[i, 0] / sums[i, 1]).float() for i, key in enumerate(keys) if sums[i, 1] > 0}
        if values:
            sync = self._world_size() > 1  # the values are already the same on every rank
            self.log_dict(values, on_step=False, on_epoch=True, sync_dist=sync)
            self.log("val_loss", values["val/loss"], on_epoch=True, prog_bar=True, logger=False, sync_dist=sync)
        self._val_sums = {}

    # ------------------------------------------------------------ optimiser

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.optim.lr, weight_decay=self.optim.weight_decay)
        optim = self.optim

        def factor(step: int) -> float:  # the run's length read at each step: a resumed run may set another
            if optim.final_lr_fraction is None:
                return optim.factor(step, 0)
            trainer = self.trainer
            total = trainer.max_steps if trainer.max_steps > 0 else int(trainer.estimated_stepping_batches)
            return optim.factor(step, total)

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_fit_start(self) -> None:
        if self.trainer.is_global_zero:
            mode = (f"LoRA rank {self.lora_options.rank}, alpha {self.lora_options.alpha:g}, "
                    f"{len(self.lora_layers)} layers"
                    if self.hparams.finetune == "lora" else "full fine-tuning")
            rank_zero_info(f"lora_sam: {self.hparams.model_type} at {tuple(self.hparams.image_size)}, {mode}\n"
                           f"{parameter_summary(self.sam)}")

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
            rank_zero_info(f"lora_sam: wrote {path}")

    def export_weights(self, path: str | os.PathLike) -> Path:
        """LoRA: the adapter (``.safetensors``, LoRA tensors only). Full: the whole state dict at the
        training resolution in its family's official format (``.pth``; ``families.build(model_type, path,
        image_size)`` loads it; for SAM 2.1 Meta's ``{"model": state_dict}``, which ``build_sam2`` loads too)."""
        path = Path(path)
        if self.hparams.finetune == "lora":
            save_adapter(self.sam, path, targets=self.lora_options.layers, model_type=self.hparams.model_type,
                         image_size=self.hparams.image_size)
        else:
            with atomic_path(path) as tmp:
                state = {k: v.detach().cpu() for k, v in self.sam.state_dict().items()}
                torch.save(family_of(self.sam).to_checkpoint(state), tmp)
        return path

