"""``lora-sam summary``: total and trainable parameters per part of a model type, fully unfrozen and with LoRA."""

from __future__ import annotations

import argparse
import warnings

from lora_sam.lora import LoRAOptions, inject_lora
from lora_sam.lora.summary import ParameterSummary, parameter_summary
from lora_sam.models.families import build, model_types, unfreeze
from lora_sam.settings import MODEL_TYPE, add_options, from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-type", default=MODEL_TYPE, choices=model_types(),
                        help="the model type (default %(default)s)")
    add_options(parser, LoRAOptions, skip=("dropout",))
    parser.add_argument("--targets", dest="layers", help=argparse.SUPPRESS)  # the old name of --layers
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")


def run(args: argparse.Namespace) -> int:
    options = from_args(LoRAOptions, args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sam = build(args.model_type, "random", (1024, 1024)).module
    unfreeze(sam)
    full = parameter_summary(sam)
    names = inject_lora(sam, options.rank, options.alpha, options.layers)
    lora = parameter_summary(sam)
    render = ParameterSummary.to_markdown if args.markdown else ParameterSummary.__str__
    print(f"{args.model_type}, full fine-tuning (every parameter trainable but the parts that do not run on images):")
    print(render(full))
    print(f"\n{args.model_type}, LoRA rank {options.rank}, alpha {options.alpha:g}, {len(names)} layers wrapped "
          f"(layers: {options.layers}):")
    print(render(lora))
    return 0
