"""``lora-sam check-data ROOT``: read every sample and report each problem with its file and field.

It runs the datasets' own reading and validation (``annotations.py``, ``samples.read_raw``),
so it reports exactly what training would skip, plus the warnings training tolerates:
unparsable JSON, missing keys, RLE sizes that do not match the image, undecodable counts,
missing or undecodable images, empty annotations, grayscale / CMYK / RGBA images (converted
on load), bboxes or areas inconsistent with their mask; for instance-label folders, images
without a label (and labels without an image), label maps that are not integer maps or do not
match their image's size, empty label maps, stray files. It writes nothing.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from tqdm import tqdm

from lora_sam.data.annotations import BadSample, Problem, errors
from lora_sam.data.datasets import CocoInstances, SampleDataset
from lora_sam.data.labels import InstanceFolder
from lora_sam.data.loaders import add_data_arguments, open_dataset
from lora_sam.data.samples import Raw, SampleOptions, finish
from lora_sam.data.shards import SA1BShards
from lora_sam.models.checkpoints import DEFAULT_IMAGE_SIZE

__all__ = ["Problem", "check_data"]


def check_data(
    root: str | Path, *, image_dir: str | Path | None = None, image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE
) -> list[Problem]:
    """Every problem of the dataset at ``root`` (any kind ``get_loaders`` reads).

    Problems of severity ``"error"`` are the samples training skips (or fails on when strict);
    ``"warning"`` ones are tolerated by training.
    """
    return _check(root, image_dir=image_dir, image_size=image_size, progress=False)[0]


def _check(
    root: str | Path, *, image_dir: str | Path | None, image_size: tuple[int, int], progress: bool
) -> tuple[list[Problem], int]:
    with warnings.catch_warnings():  # a root that is no dataset at all: an error of the command (status 2)
        warnings.simplefilter("ignore")
        dataset = open_dataset(root, image_dir=image_dir, image_size=tuple(image_size))
    problems: list[Problem] = []
    dataset.check_fields = True
    if isinstance(dataset, CocoInstances | InstanceFolder):
        problems += dataset.file_problems
    if isinstance(dataset, SA1BShards):
        dataset.shuffle = False

        def record_error(exc: Exception) -> bool:
            problems.append(
                Problem(
                    str(exc.args[-1]) if exc.args else str(root), "", f"unreadable tar data ({exc.args[0]})"
                )
            )
            return True

        count = 0
        for record in tqdm(
            dataset.records(handler=record_error), desc="check-data", unit="image", disable=not progress
        ):
            _, raw, found = dataset.read_record(record)
            problems += found + _filter_problems(raw, found, dataset.options)
            count += 1
        return problems, count
    assert isinstance(dataset, SampleDataset)
    for index in tqdm(range(len(dataset)), desc="check-data", unit="image", disable=not progress):
        raw, found = dataset.read(index)
        problems += found + _filter_problems(raw, found, dataset.options)
    return problems, len(dataset)


def _filter_problems(raw: Raw | None, found: list[Problem], options: SampleOptions) -> list[Problem]:
    """The problem of a readable image whose masks the training filters all drop (``samples.finish``)."""
    sample = finish(raw, options, epoch=0) if raw is not None and not errors(found) else None
    return [Problem(sample.path, "masks", sample.reason)] if isinstance(sample, BadSample) else []


def _relative(path: str, root: Path) -> str:
    base = root if root.is_dir() else root.parent
    try:
        return str(Path(path).resolve().relative_to(base.resolve()))
    except ValueError:
        return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Read every sample of a dataset as training would and report each problem with its file and "
        "field, then a summary. Exit status 1 if anything is reported, 0 if the data is clean. "
        "Errors are samples training skips (or fails on with strict=True); warnings are tolerated "
        "(e.g. grayscale images converted to RGB on load). Nothing is written."
    )
    add_data_arguments(
        parser,
        root_help="data: SA-1B folder, .tar shards (folder, glob or brace pattern), COCO .json, a folder of "
                  "images/ + labels/ (instance maps) or masks/NAME/*.png, or a cache",
        size_help="training size; images whose masks all become too small at it are reported (default "
                  f"{DEFAULT_IMAGE_SIZE[0]} {DEFAULT_IMAGE_SIZE[1]})",
    )


def run(args: argparse.Namespace) -> int:
    root = Path(args.root)
    problems, count = _check(
        args.root, image_dir=args.image_dir, image_size=tuple(args.image_size), progress=True
    )
    for problem in problems:
        print(f"{problem.severity}: {Problem(_relative(problem.path, root), problem.field, problem.message)}")
    bad = errors(problems)
    bad_files = len({p.path for p in bad})
    print(
        f"checked {count} images in {args.root}: {len(bad)} errors in {bad_files} files "
        f"(skipped in training), {len(problems) - len(bad)} warnings"
    )
    if bad:
        print("fix or remove the files with errors: training skips them, and strict=True stops on them")
    return 1 if problems else 0
