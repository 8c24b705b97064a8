"""The ``lora-sam`` command line.

Each subcommand lives beside its code: the module named in ``_COMMANDS`` defines
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only when
their subcommand runs, so ``lora-sam --help`` answers without importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

_COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("lora_sam.runs.demo", "run the whole job on built-in synthetic data and write a report"),
    "synth": ("lora_sam.data.synth", "write synthetic SA-1B-format data (JPEG + JSON with RLE masks)"),
    "check-data": ("lora_sam.data.check", "read every sample of a dataset and report each problem"),
    "prepare": ("lora_sam.data.prepare", "write a low-resolution cache of images and packed masks"),
    "pretrain": ("lora_sam.runs.pretrain", "train a small SAM from scratch at several resolutions, resumably"),
    "distill": ("lora_sam.runs.distill", "start a small SAM 2.1 from a trained SAM v1 base (before pretrain)"),
    "fit": ("lora_sam.runs.fit", "train LoRA (or full) SAM with a YAML config (LightningCLI)"),
    "export": ("lora_sam.runs.export", "fold an adapter into the base (official SAM checkpoint; ONNX files)"),
    "segment-all": ("lora_sam.runs.segment_all", "segment everything in images; SA-1B JSON with RLE masks"),
    "summary": ("lora_sam.runs.summary", "print total / trainable parameters per SAM part"),
    "eval": ("lora_sam.evaluation.run", "evaluate models on the same data and prompts"),
    "compare": ("lora_sam.runs.compare", "train LoRA and fully unfrozen SAM alike and compare them"),
    "report": ("lora_sam.report.build", "write a Markdown report with figures from a run folder"),
    "app": ("lora_sam.app.serve", "an interactive page: click on any image and compare the models (needs [app])"),
}

# Subcommands that parse their own arguments (LightningCLI).
_PASSTHROUGH = {"fit"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="lora-sam",
        description="Fine-tune Segment Anything (SAM) with LoRA adapters.",
        epilog="Run 'lora-sam COMMAND --help' for the options of one command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in _COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    name = argv[0]
    if name not in _COMMANDS:
        parser.error(f"unknown command {name!r}; choose from {', '.join(_COMMANDS)}")
    module = importlib.import_module(_COMMANDS[name][0])
    if name in _PASSTHROUGH:
        return int(module.run_cli(argv[1:]) or 0)
    command_parser = argparse.ArgumentParser(prog=f"lora-sam {name}", description=_COMMANDS[name][1])
    module.add_arguments(command_parser)
    args = command_parser.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
