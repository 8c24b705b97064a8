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
import sys
from pathlib import Path
from typing import Any

from lora_sam.checkpoints import DEFAULT_IMAGE_SIZE

__all__ = ["DEMO_RUN", "INSTALL_HINT", "add_arguments", "resolve_settings", "run"]

INSTALL_HINT = 'pip install "lora_sam[app]"'
DEMO_RUN = Path("runs/demo")
"""Where ``lora-sam demo`` writes by default (its ``--out``): the page's models when none is named."""


def resolve_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The models and data of the page: the options, filled in from ``--run DIR`` where not given.

    With no ``--run``, ``--checkpoint``, ``--adapter`` or ``--full``, ``runs/demo`` (``DEMO_RUN``, relative to
    the working folder) is the run when its ``compare.json`` exists.

    Returns {"model_type", "checkpoint", "image_size": (H, W), "adapters": [path], "fulls": [path],
    "data": root or None, "run": the run folder used or None}.
    """
    settings: dict[str, Any] = {"model_type": args.model_type, "checkpoint": args.checkpoint,
                                "image_size": args.image_size, "adapters": list(args.adapter),
                                "fulls": list(args.full), "data": args.data, "run": args.run}
    named = args.checkpoint is not None or args.adapter or args.full
    if args.run is None and not named and (DEMO_RUN / "compare.json").is_file():
        settings["run"] = str(DEMO_RUN)
    if settings["run"] is not None:
        run_dir = Path(settings["run"])
        record = run_dir / "compare.json"
        if not record.is_file():
            raise FileNotFoundError(f"{record} not found: --run takes a folder written by lora-sam compare or demo")
        try:
            saved = json.loads(record.read_text())["settings"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{record}: not a compare.json with 'settings' ({err})") from err
        for key in ("model_type", "checkpoint", "image_size", "data"):
            if settings[key] is None:
                settings[key] = saved.get(key)
        for key, path in (("adapters", run_dir / "lora" / "adapter.safetensors"), ("fulls", run_dir / "full" / "model.pth")):
            if path.is_file() and str(path) not in settings[key]:
                settings[key].append(str(path))
        if settings["data"] is not None and not Path(settings["data"]).exists():
            settings["data"] = None
    settings["model_type"] = settings["model_type"] or "tiny"
    settings["image_size"] = tuple(int(v) for v in (settings["image_size"] or DEFAULT_IMAGE_SIZE))
    return settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "An interactive page (Gradio) to click on any image and compare models side by side: the base, LoRA "
        "adapters and fully fine-tuned models, at the training resolution or through the original 1024 px "
        f"pipeline. Needs the app extra: {INSTALL_HINT}."
    )
    parser.add_argument("--checkpoint", default=None,
                        help="base SAM checkpoint (official format; default: the built-in tiny base)")
    parser.add_argument("--model-type", default=None, help="vit_b / vit_l / vit_h / tiny (default tiny)")
    parser.add_argument("--adapter", action="append", default=[], metavar="A",
                        help="a LoRA adapter (.safetensors) on the base; repeatable")
    parser.add_argument("--full", action="append", default=[], metavar="F",
                        help="a fully fine-tuned model.pth at the training resolution; repeatable")
    parser.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help=f"training resolution (default {DEFAULT_IMAGE_SIZE[0]} {DEFAULT_IMAGE_SIZE[1]})")
    parser.add_argument("--run", default=None, metavar="DIR",
                        help="a lora-sam compare / demo folder: its base, lora/adapter.safetensors, "
                             "full/model.pth and data (options given explicitly win; default: runs/demo when "
                             "lora-sam demo has written it and no model option is given)")
    parser.add_argument("--data", default=None, metavar="ROOT",
                        help="a dataset with ground-truth masks to pick images from (SA-1B folder, COCO, cache)")
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch CPU threads for encoding images (default: torch's; clicks decode on one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--share", action="store_true", help="also make a public Gradio link (off by default)")


def run(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError:
        print(f"lora-sam app: error: the app needs Gradio, which is not installed: {INSTALL_HINT}", file=sys.stderr)
        return 2
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import torch

    from lora_sam.app.images import DatasetImages
    from lora_sam.app.models import ModelBank
    from lora_sam.app.ui import launch_page
    from lora_sam.data.annotations import DataError

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        settings = resolve_settings(args)
        bank = ModelBank(model_type=settings["model_type"], checkpoint=settings["checkpoint"],
                         image_size=settings["image_size"], adapters=settings["adapters"], fulls=settings["fulls"],
                         device=args.device)
        data = None if settings["data"] is None else DatasetImages(settings["data"], settings["image_size"])
    except (FileNotFoundError, ValueError, DataError) as err:
        print(f"lora-sam app: error: {err}", file=sys.stderr)
        return 2
    if args.run is None and settings["run"] is not None:
        print(f"lora-sam app: the models of {settings['run']} (lora-sam demo's results); --checkpoint, --adapter, "
              "--full or --run choose others")
    print(f"lora-sam app: {', '.join(bank.names)} at {bank.image_size[0]}x{bank.image_size[1]} on {bank.device}")
    launch_page(bank, data, server_name=args.host, server_port=args.port, share=args.share)
    return 0
