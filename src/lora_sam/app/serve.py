"""``lora-sam app``: an interactive page to click on any image and compare the base, LoRA and full models.

Gradio is an optional extra (``pip install "lora_sam[app]"``): this module imports it only when the
page starts, so ``lora-sam app --help`` answers without it. ``--run DIR`` takes the models of a
``lora-sam compare`` / ``lora-sam demo`` folder: the base of ``DIR/compare.json``,
``DIR/lora/adapter.safetensors`` and ``DIR/full/model.pth``, and its data for the image list. With no
model option at all, the page takes ``runs/demo`` that way when ``lora-sam demo`` has written it, and the
built-in base alone otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from lora_sam.errors import MissingExtra
from lora_sam.evaluation.options import EvalModels
from lora_sam.models.checkpoints import BUILTIN_MODEL_TYPE
from lora_sam.models.families import data_frame, model_types_help
from lora_sam.settings import add_options, from_args

if TYPE_CHECKING:
    from lora_sam.app.models import ModelBank

__all__ = ["DEMO_RUN", "INSTALL_HINT", "AppConfig", "add_arguments", "model_bank", "resolve_settings", "run"]

INSTALL_HINT = 'pip install "lora_sam[app]"'
DEMO_RUN = Path("runs/demo")
"""Where ``lora-sam demo`` writes by default (its ``--out``): the page's models when none is named."""


@dataclass(frozen=True)
class AppConfig:
    """What the page serves and where (``lora-sam app``'s options are these fields).

    Args:
        checkpoint: base SAM checkpoint (official format; None: the run's, else the built-in tiny base).
        model_type: the base's model type (None: the run's, else tiny), of either family.
        adapters: a LoRA adapter (.safetensors) on the base.
        fulls: a fully fine-tuned model.pth at the training resolution.
        image_size: training resolution (None: the run's, else the family's default: 160 256 for SAM v1,
            224 224 for SAM 2.1).
        run: a lora-sam compare / demo folder: its base, lora/adapter.safetensors, full/model.pth and data
            (options given explicitly win; None: runs/demo when lora-sam demo has written it and no model
            option is given).
        data: a dataset with ground-truth masks to pick images from (SA-1B folder, COCO, cache).
        device: cuda / cpu (None: cuda when available).
        threads: torch CPU threads for encoding images (None: torch's; clicks decode on one).
        host: address to serve on.
        port: port.
        share: also make a public Gradio link.
    """

    checkpoint: str | None = None
    model_type: str | None = field(default=None, metadata={"listing": model_types_help})
    adapters: tuple[str, ...] = field(default=(), metadata={"flag": "adapter", "append": True, "metavar": "A"})
    fulls: tuple[str, ...] = field(default=(), metadata={"flag": "full", "append": True, "metavar": "F"})
    image_size: tuple[int, int] | None = None
    run: str | None = None
    data: str | None = None
    device: str | None = None
    threads: int | None = None
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False

    def models(self) -> EvalModels:
        """The page's models (after ``resolve_settings``)."""
        return EvalModels(self.model_type or BUILTIN_MODEL_TYPE, self.checkpoint, self.image_size, self.adapters,
                          self.fulls)


def resolve_settings(config: AppConfig) -> AppConfig:
    """The models and data of the page: ``config`` filled in from its ``run`` folder where not given.

    With no ``run``, ``checkpoint``, ``adapters`` or ``fulls``, ``runs/demo`` (``DEMO_RUN``, relative to the
    working folder) is the run when its ``compare.json`` exists. The result names a model type and an image
    size always, ``run`` the folder used (or None) and ``data`` None when the run's data is gone.
    """
    named = config.checkpoint is not None or config.adapters or config.fulls
    if config.run is None and not named and (DEMO_RUN / "compare.json").is_file():
        config = replace(config, run=str(DEMO_RUN))
    if config.run is not None:
        run_dir = Path(config.run)
        record = run_dir / "compare.json"
        if not record.is_file():
            raise FileNotFoundError(f"{record} not found: --run takes a folder written by lora-sam compare or demo")
        try:
            saved = json.loads(record.read_text())["settings"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{record}: not a compare.json with 'settings' ({err})") from err
        config = replace(config, **{key: saved.get(key) for key in ("model_type", "checkpoint", "image_size", "data")
                                    if getattr(config, key) is None})
        for key, path in (("adapters", run_dir / "lora" / "adapter.safetensors"), ("fulls", run_dir / "full" / "model.pth")):
            if path.is_file() and str(path) not in getattr(config, key):
                config = replace(config, **{key: (*getattr(config, key), str(path))})
        if config.data is not None and not Path(config.data).exists():
            config = replace(config, data=None)
    model_type = config.model_type or BUILTIN_MODEL_TYPE
    return replace(config, model_type=model_type, image_size=data_frame(model_type, config.image_size)[0])


def model_bank(config: AppConfig) -> ModelBank:
    """The page's models (``config`` after ``resolve_settings``), loaded."""
    from lora_sam.app.models import ModelBank

    m = config.models()
    return ModelBank(model_type=m.model_type, checkpoint=m.checkpoint, image_size=m.image_size, adapters=m.adapters,
                     fulls=m.fulls, device=config.device)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "An interactive page (Gradio) to click on any image and compare models side by side: the base, LoRA "
        "adapters and fully fine-tuned models, at the training resolution or through the original 1024 px "
        f"pipeline. Needs the app extra: {INSTALL_HINT}."
    )
    add_options(parser, AppConfig)


def run(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError as err:
        raise MissingExtra(f"the app needs Gradio, which is not installed: {INSTALL_HINT}") from err
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import torch

    from lora_sam.app.images import DatasetImages
    from lora_sam.app.ui import launch_page

    given = from_args(AppConfig, args)
    if given.threads:
        torch.set_num_threads(given.threads)
    config = resolve_settings(given)
    bank = model_bank(config)
    data = None if config.data is None else DatasetImages(config.data, bank.image_size, frame=bank.frame)
    if given.run is None and config.run is not None:
        print(f"lora-sam app: the models of {config.run} (lora-sam demo's results); --checkpoint, --adapter, "
              "--full or --run choose others")
    print(f"lora-sam app: {', '.join(bank.names)} at {bank.image_size[0]}x{bank.image_size[1]} on {bank.device}")
    launch_page(bank, data, server_name=config.host, server_port=config.port, share=config.share)
    return 0
