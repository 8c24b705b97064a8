"""Merged export: fold an adapter into its base checkpoint and write an official SAM checkpoint.

The model is rebuilt at 1024 px from the base checkpoint (its own position embedding is
kept), the adapter's LoRA updates are merged into the Linear / Conv weights, and the
plain ``state_dict`` is saved: ``segment_anything.sam_model_registry[model_type](checkpoint=out)``
loads it with strict key checking and ``SamPredictor`` runs it as any SAM.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from lora_sam.adapter import apply_adapter, read_adapter_info
from lora_sam.files import atomic_path
from lora_sam.lora import merge_lora
from lora_sam.model import ORIGINAL_SIZE, build_sam


def export_merged(
    adapter: str | os.PathLike,
    out: str | os.PathLike,
    base_checkpoint: str | os.PathLike | None = None,
    model_type: str | None = None,
) -> Path:
    """Write ``base_checkpoint`` + ``adapter`` merged, in the official format, to ``out``.

    Args:
        adapter: a ``.safetensors`` adapter written by ``save_adapter`` (or a training run).
        base_checkpoint: the official checkpoint the adapter was trained on; None resolves it like
            ``build_sam`` does ($LORA_SAM_CHECKPOINT, then the default path).
        model_type: defaults to the adapter's own; a different one is an error.
    Returns:
        ``out`` as a Path.
    """
    info = read_adapter_info(adapter)
    if model_type and info.model_type and model_type != info.model_type:
        raise ValueError(f"adapter {adapter} was trained on {info.model_type}, not {model_type}")
    model_type = model_type or info.model_type
    if model_type is None:
        raise ValueError(f"adapter {adapter} does not record its model type: pass model_type")
    sam = build_sam(model_type, base_checkpoint, image_size=(ORIGINAL_SIZE, ORIGINAL_SIZE))
    apply_adapter(sam, adapter)
    merged = merge_lora(sam)
    state = {k: v.detach().contiguous() for k, v in merged.state_dict().items()}
    out = Path(out)
    with atomic_path(out) as tmp:
        torch.save(state, tmp)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapter", type=Path, help="adapter file (.safetensors) from a LoRA run")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="base SAM checkpoint the adapter was trained on (default: $LORA_SAM_CHECKPOINT, "
                             "then ~/.cache/lora_sam/<official file>)")
    parser.add_argument("--model-type", default=None, help="vit_b / vit_l / vit_h / tiny (default: the adapter's)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the merged checkpoint (.pth)")


def run(args: argparse.Namespace) -> int:
    out = export_merged(args.adapter, args.out, args.checkpoint, args.model_type)
    info = read_adapter_info(args.adapter)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB): {info.model_type} with the rank-{info.rank} "
          f"adapter merged into {len(info.layers)} layers, official SAM format, 1024 px")
    return 0
