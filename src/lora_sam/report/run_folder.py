"""A run folder as the report sees it: its files, settings and the models rebuilt from them.

A run folder is what ``lora-sam compare`` (or ``lora-sam demo``) writes::

    compare.json, eval.json          settings, costs, metrics and per-prompt results
    base.pth                         the base checkpoint (when generated or trained by the demo)
    lora/ full/                      hparams.yaml, metrics.csv, adapter.safetensors / model.pth
    demo.json                        (demo only) how the base model was made

Paths recorded inside the JSON files are used when they exist, else the same file name inside
the folder, so a run folder can be moved.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from lora_sam.errors import UserError
from lora_sam.models.families import Family
from lora_sam.training.recipe import RecipeOptions

__all__ = ["Missing", "REAL_DATA_ENV", "Run", "find_samples", "first_click_masks"]

REAL_DATA_ENV = "LORA_SAM_REAL_DATA"


class Missing(Exception):
    """A file that a section needs is not in the run folder; the message names it."""


class Run:
    """Lazy access to a run folder's files; every accessor raises ``Missing`` naming the absent file."""

    def __init__(self, root: str | Path, *, device: str | None = None, real_data: str | Path | None = None) -> None:
        self.root = Path(root)
        real = real_data or os.environ.get(REAL_DATA_ENV)
        self.real_data = Path(real) if real else None  # optional real samples for the figures
        if not self.root.is_dir():
            raise FileNotFoundError(f"run folder {self.root} does not exist")
        if not any((self.root / name).is_file() for name in ("compare.json", "eval.json")):
            raise UserError(f"{self.root} is not a run folder: it holds neither compare.json nor eval.json; pass the "
                            f"folder that lora-sam demo, compare or eval wrote (their --out)")
        self.figures = self.root / "figures"
        self.device = torch.device(device or "cpu")

    # ------------------------------------------------------------------ files

    def need(self, relative: str) -> Path:
        path = self.root / relative
        if not path.exists():
            raise Missing(f"`{path}`")
        return path

    def locate(self, recorded: str | None, relative: str) -> Path:
        """The recorded path when it exists, else ``relative`` inside the run folder."""
        if recorded and Path(recorded).exists():
            return Path(recorded)
        return self.need(relative)

    def json(self, relative: str) -> dict[str, Any]:
        path = self.need(relative)
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err

    @cached_property
    def compare(self) -> dict[str, Any]:
        return self.json("compare.json")

    @cached_property
    def eval(self) -> dict[str, Any]:
        return self.json("eval.json")

    @cached_property
    def demo(self) -> dict[str, Any] | None:
        return self.json("demo.json") if (self.root / "demo.json").is_file() else None

    def hparams(self, mode: str) -> dict[str, Any]:
        path = self.need(f"{mode}/hparams.yaml")
        with path.open() as f:
            values = yaml.load(f, Loader=yaml.FullLoader) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of hyperparameters")
        return values

    def weights(self, mode: str) -> Path:
        name = "adapter.safetensors" if mode == "lora" else "model.pth"
        recorded = self.compare.get("runs", {}).get(mode, {}).get("weights_file") if self._has("compare.json") else None
        return self.locate(recorded, f"{mode}/{name}")

    def _has(self, relative: str) -> bool:
        return (self.root / relative).exists()

    # --------------------------------------------------------------- settings

    @cached_property
    def settings(self) -> dict[str, Any]:
        """``compare.json`` settings, else ``eval.json`` settings (fields: model_type, image_size, data, ...)."""
        if self._has("compare.json"):
            return self.compare["settings"]
        return self.eval["settings"]

    @property
    def model_type(self) -> str:
        return str(self.settings["model_type"])

    @property
    def image_size(self) -> tuple[int, int]:
        h, w = self.settings["image_size"]
        return int(h), int(w)

    @cached_property
    def base_checkpoint(self) -> Path:
        recorded = self.settings.get("checkpoint")
        return self.locate(recorded, "base.pth" if not recorded else Path(recorded).name)

    @cached_property
    def data_root(self) -> Path:
        recorded = self.settings.get("data")
        if recorded and Path(recorded).exists():
            return Path(recorded)
        for candidate in ("data/finetune", "data"):
            if self._has(candidate):
                return self.root / candidate
        raise Missing(f"the data folder `{recorded}` recorded in the run")

    def eval_model(self, kind: str, source: str | None = None) -> tuple[str, dict[str, Any]] | None:
        """The first ``eval.json`` model of a kind (``base``, ``lora``, ``full``, ``original``)."""
        for name, entry in self.eval["models"].items():
            if entry.get("kind") == kind and (source is None or entry.get("input") == source):
                return name, entry
        return None

    # ----------------------------------------------------------------- models

    @property
    def family(self) -> Family:
        """The run's model family (``lora_sam.models.families``), which builds its networks."""
        from lora_sam.models.families import family_of

        return family_of(self.model_type)

    @cached_property
    def plain_model(self) -> nn.Module:
        """The run's model type at its training resolution, random weights, every parameter trainable."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return self.family.build(self.model_type, "random", self.image_size).requires_grad_(True)

    def lora_model(self, layers: list[str], rank: int, alpha: float) -> nn.Module:
        """``plain_model`` with LoRA on ``layers`` (a copy)."""
        from lora_sam.lora import inject_lora

        sam = copy.deepcopy(self.plain_model)
        inject_lora(sam, rank, alpha, layers)
        return sam

    def recipe_options(self, mode: str) -> RecipeOptions:
        """The training recipe's options of a run (``lora`` / ``full``), read from its hparams.yaml."""
        return RecipeOptions.from_mapping(self.hparams(mode))


def find_samples(run: Run, image_ids: set[str]) -> dict[str, dict[str, Any]]:
    """The evaluation samples (as ``lora-sam eval`` made them) of the given image ids, from the recorded data."""
    from lora_sam.evaluation.options import EvalOptions
    from lora_sam.evaluation.run import eval_samples
    from lora_sam.models.families import data_frame

    s = run.eval["settings"]
    if not Path(s["data"]).exists():
        raise Missing(f"the evaluation data `{s['data']}` recorded in eval.json")
    options = EvalOptions(split=s["split"], val_fraction=s["val_fraction"], max_images=s.get("max_images"),
                          seed=s["seed"])
    frame = data_frame(s["model_type"], tuple(s["image_size"]))[1]
    samples, _, _ = eval_samples(s["data"], tuple(s["image_size"]), options, frame=frame)
    found = {}
    for sample in samples:
        if isinstance(sample, dict) and str(sample["image_id"]) in image_ids:
            found[str(sample["image_id"])] = sample
            if len(found) == len(image_ids):
                break
    return found


def first_click_masks(segmenter: Any, sample: dict[str, Any], prompts: dict[str, Any],
                      rows: list[int]) -> list[torch.Tensor]:
    """A segmenter's answer to the first click of each of ``rows`` (eval.json prompts of one image), as the
    evaluation's first click takes it: the output with the highest predicted IoU of 3; (H, W) bool each."""
    points = torch.tensor([prompts["click_points"][i][:1] for i in rows], dtype=torch.float32)  # (K, 1, 2)
    labels = torch.tensor([prompts["click_labels"][i][:1] for i in rows])  # (K, 1)
    segmenter.set_image(sample)
    answer = segmenter.predict(points=points, labels=labels, multimask=True)
    chosen = answer.iou_pred.argmax(1)
    return [answer.masks[r, int(chosen[r])] for r in range(len(rows))]
