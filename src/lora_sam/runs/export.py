"""``lora-sam export``: the merged official checkpoint (``lora_sam.lora.adapter``) and, with ``--onnx DIR``, its ONNX files.

The merge itself is ``lora_sam.lora.adapter``'s command, unchanged; the ONNX step lives here because
``lora_sam.lora.adapter`` and ``lora_sam.models.sam_v1.deploy`` sit side by side in one layer and may not import each other.
The ONNX files are made from the merged checkpoint just written, so they hold exactly its weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lora_sam.errors import UserError
from lora_sam.lora import adapter
from lora_sam.models.families import family_of
from lora_sam.models.sam_v1.deploy import export_onnx, require_onnx
from lora_sam.models.sam_v1.model import ORIGINAL_SIZE, build_sam


def add_arguments(parser: argparse.ArgumentParser) -> None:
    adapter.add_arguments(parser)
    parser.add_argument(
        "--onnx",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write the merged model as ONNX into DIR: encoder.onnx (image encoder) and "
        "decoder.onnx (prompt encoder + mask decoder, Meta's demo inputs); needs "
        "pip install 'lora_sam[onnx]'",
    )
    parser.add_argument(
        "--quantize",
        action="store_true",
        help="with --onnx: also write encoder.int8.onnx and decoder.int8.onnx (int8 weights, "
        "smaller, slightly less exact)",
    )
    parser.add_argument("--opset", type=int, default=17, help="with --onnx: the ONNX opset (default 17)")


def _write_onnx(args: argparse.Namespace) -> dict[str, Path]:
    model_type = args.model_type or adapter.read_adapter_info(args.adapter).model_type
    sam = build_sam(model_type, args.out, image_size=(ORIGINAL_SIZE, ORIGINAL_SIZE))
    return export_onnx(sam, args.onnx, opset=args.opset, quantize=args.quantize)


def _check_onnx_family(args: argparse.Namespace) -> None:
    """``--onnx`` is SAM v1's (Meta's ``SamOnnxModel``): a SAM 2.1 model is refused before anything is written."""
    model_type = args.model_type or adapter.read_adapter_info(args.adapter).model_type
    if model_type and family_of(model_type).name != "sam_v1":
        raise UserError(f"--onnx exports SAM v1 models only (Meta's SamOnnxModel), and {model_type} is SAM 2.1, "
                        f"whose image path has no ONNX export in lora_sam yet: drop --onnx to write the merged "
                        f"checkpoint, which SAM2ImagePredictor runs")


def run(args: argparse.Namespace) -> int:
    if args.quantize and args.onnx is None:
        raise UserError("--quantize needs --onnx DIR (where the ONNX files go)")
    if args.onnx is not None:
        _check_onnx_family(args)
        require_onnx()  # before the merge, which may take minutes for vit_h
    status = adapter.run(args)
    if status or args.onnx is None:
        return status
    for name, path in _write_onnx(args).items():
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB): {name}")
    return 0
