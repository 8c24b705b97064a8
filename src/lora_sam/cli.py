"""The ``lora-sam`` command line.

Each subcommand lives beside its code: the module named in ``_COMMANDS`` defines
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only when
their subcommand runs, so ``lora-sam --help`` answers without importing torch.

The error contract (``lora_sam.errors``): an error the user can fix prints one paragraph on stderr, naming the
input and what to do, and exits with status 2; whatever the failed command had created in its output folders
(``--out``, ``--onnx``) is removed, so nothing half-written is left. ``--debug`` (anywhere on the line) or
``LORA_SAM_DEBUG=1`` shows the traceback instead. Any other exception is an internal error: its traceback shows.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from lora_sam.errors import DEBUG_ENV, USER_ERRORS
from lora_sam.runs.allocator import tune_allocator

_COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("lora_sam.runs.demo", "run the whole job and write a report: real weights on real nuclei (--synthetic: "
                                    "built-in data)"),
    "synth": ("lora_sam.data.synth", "write synthetic SA-1B-format data (JPEG + JSON with RLE masks)"),
    "nuclei": ("lora_sam.data.nuclei", "write real annotated nuclei (DSB 2018, from the stardist package) as tiles"),
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


# the arguments that name where a command writes (removed again on a user error, if the command created them)
_OUTPUTS = ("out", "onnx")


def _created(before: dict[Path, set[Path] | None]) -> list[Path]:
    """What appeared in the output folders since ``before`` (each folder's listing, None: it did not exist)."""
    made = []
    for folder, listing in before.items():
        if listing is None:
            made += [folder] if folder.exists() else []
        elif folder.is_dir():
            made += [p for p in folder.iterdir() if p not in listing]
    return made


def _outputs(args: argparse.Namespace) -> dict[Path, set[Path] | None]:
    """Each output path's listing before the command runs: a folder's entries; None where nothing is there yet
    (a folder or a file, removed whole if the command created it); an empty set for a file already there (kept:
    single files are written atomically)."""
    folders = [Path(v) for v in (getattr(args, name, None) for name in _OUTPUTS) if isinstance(v, (str, Path))]
    return {f: (set(f.iterdir()) if f.is_dir() else None if not f.exists() else set()) for f in folders}


def _remove(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def user_error_text(command: str, err: BaseException) -> str:
    """The one paragraph ``lora-sam COMMAND`` prints for a user error."""
    text = str(err).strip() or type(err).__name__
    if isinstance(err, OSError) and err.filename and str(err.filename) not in text:
        text = f"{err.filename}: {text}"
    text = " ".join(text.split())  # one paragraph: the terminal wraps it
    return f"lora-sam {command}: error: {text}\n(lora-sam --debug {command} ..., or {DEBUG_ENV}=1, shows the traceback)"


def run_guarded(command: str, module: Any, args: argparse.Namespace, *, debug: bool) -> int:
    """``module.run(args)`` under the error contract (the module docstring). A resumable command
    (``RESUMABLE = True`` in its module: its run folder holds checkpoints to resume from) keeps what it wrote."""
    before = {} if getattr(module, "RESUMABLE", False) else _outputs(args)
    try:
        status = int(module.run(args) or 0)
    except USER_ERRORS as err:
        _remove(_created(before))
        if debug:
            raise
        print(user_error_text(command, err), file=sys.stderr)
        return 2
    if status == 2:  # the command's own report of a user error
        _remove(_created(before))
    return status


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    parser = argparse.ArgumentParser(
        prog="lora-sam",
        description="Fine-tune Segment Anything (SAM) with LoRA adapters.",
        epilog="Run 'lora-sam COMMAND --help' for the options of one command. An error you can fix (a file, a "
               f"model type, bad data) ends with exit status 2 and one paragraph; --debug or {DEBUG_ENV}=1 adds "
               "its traceback.",
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
    tune_allocator()  # large tensors reuse freed memory instead of page-faulting it in again (runs/allocator.py)
    module = importlib.import_module(_COMMANDS[name][0])
    if name in _PASSTHROUGH:
        return int(module.run_cli(argv[1:]) or 0)
    command_parser = argparse.ArgumentParser(prog=f"lora-sam {name}", description=_COMMANDS[name][1])
    module.add_arguments(command_parser)
    args = command_parser.parse_args(argv[1:])
    return run_guarded(name, module, args, debug=debug)


if __name__ == "__main__":
    sys.exit(main())
