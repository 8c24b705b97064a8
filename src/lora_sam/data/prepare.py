"""``lora-sam prepare``: write a low-resolution cache of images and packed masks (read by ``CachedDataset``).

Layout of a cache folder::

    lora_sam_cache.json      manifest: format version, image_size (H, W), source, items
    samples/00000000.npz     image uint8 (h, w, 3); masks np.packbits of bool (M, H * W), each
                             mask at training size (H, W), zero padded as in the samples;
                             mask_shape (M, H, W); fractions float64 (M,); original_size (h0, w0)

Every decodable mask is stored with its area fraction, so mask filtering and the target draws
happen at read time exactly as for the source dataset: ``CachedDataset`` returns the same
samples. Bad source samples are listed in the manifest with their problems and read back as
``BadSample``. Nothing is written into the data root unless asked for.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset, IterableDataset
from tqdm import tqdm

from lora_sam.data.annotations import Problem, errors
from lora_sam.data.datasets import CACHE_MANIFEST, FORMAT_VERSION, SampleDataset
from lora_sam.data.loaders import add_data_arguments, open_dataset
from lora_sam.data.samples import Raw, SampleOptions
from lora_sam.data.shards import SA1BShards
from lora_sam.io import atomic_path
from lora_sam.models.checkpoints import DEFAULT_IMAGE_SIZE

# (image_id, path, raw or None, error problems) of one source image.
Entry = tuple[str, str, Raw | None, list[Problem]]


class _MapEntries(Dataset):
    def __init__(self, dataset: SampleDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Entry:
        raw, problems = self.dataset.read(index)
        return self.dataset.image_id(index), self.dataset.path(index), raw, errors(problems)


class _ShardEntries(IterableDataset):
    def __init__(self, dataset: SA1BShards) -> None:
        self.dataset = dataset

    def __iter__(self) -> Iterator[Entry]:
        for record in self.dataset.records():
            path, raw, problems = self.dataset.read_record(record)
            yield Path(record["__key__"]).name, path, raw, errors(problems)


def _identity(entry: Entry) -> Entry:
    return entry


def _check_out(root: Path, out: Path, allow_inside_root: bool) -> None:
    data_dir = root.resolve().parent if root.is_file() else root.resolve()
    if root.exists() and not allow_inside_root and out.resolve().is_relative_to(data_dir):
        raise ValueError(
            f"{out} is inside the data root {root}; lora-sam never writes into your data. "
            "Choose another folder, or pass allow_inside_root=True (--inside-root) if you mean it."
        )
    if out.exists() and any(out.iterdir()) and not (out / CACHE_MANIFEST).is_file():
        raise FileExistsError(f"{out} exists and is not a lora-sam cache; choose an empty or new folder")


def prepare_cache(
    root: str | Path,
    out: str | Path,
    *,
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    image_dir: str | Path | None = None,
    fast: bool = SampleOptions.fast,
    frame: str = SampleOptions.frame,
    num_workers: int | None = None,
    allow_inside_root: bool = False,
    progress: bool = True,
) -> Path:
    """Write the cache of the dataset at ``root`` (any kind ``get_loaders`` reads) to ``out``.

    Args:
        root: SA-1B folder, shards, COCO json (with ``image_dir``), instance-label folder
            (``images/`` + ``labels/`` or ``masks/``).
        out: cache folder (created; an existing cache there is replaced).
        image_size: training (H, W); the cache can only be read at this size.
        fast: read masks with the fast RLE path (``False``: the full-resolution reference path).
        frame: ``"pad"`` (SAM v1) or ``"square"`` (SAM 2): how images enter the frame (``SampleOptions.frame``);
            the cache can only be read with this frame.
        num_workers: reader processes (None: read in this process).
        allow_inside_root: permit ``out`` inside the data root.
        progress: show a tqdm bar.

    Returns:
        The path of the manifest.
    """
    root_path, out = Path(root), Path(out)
    _check_out(root_path, out, allow_inside_root)
    source = open_dataset(root, image_dir=image_dir, image_size=tuple(image_size), fast=fast, frame=frame)
    if isinstance(source, SA1BShards):
        source.shuffle = False
        entries: Dataset = _ShardEntries(source)
        total = None
    else:
        assert isinstance(source, SampleDataset)
        entries, total = _MapEntries(source), len(source)
    loader = DataLoader(entries, batch_size=None, num_workers=num_workers or 0, collate_fn=_identity)
    (out / CACHE_MANIFEST).unlink(missing_ok=True)
    if (out / "samples").exists():
        shutil.rmtree(out / "samples")
    (out / "samples").mkdir(parents=True)
    entries_bar = tqdm(loader, total=total, desc="prepare", unit="image", disable=not progress)
    manifest = {
        "format": "lora_sam cache",
        "version": FORMAT_VERSION,
        "image_size": list(image_size),
        "fast": fast,
        "frame": frame,
        "source": str(root),
        "items": _write_samples(entries_bar, out),
    }
    path = out / CACHE_MANIFEST
    with atomic_path(path) as partial:  # the manifest marks a finished cache: it is written last, whole
        partial.write_text(json.dumps(manifest, indent=1))
    return path


def _write_samples(entries: Iterable[Entry], out: Path) -> list[dict[str, Any]]:
    """Write each readable entry as ``out/samples/<n>.npz``; the manifest's items, bad entries with their problems."""
    items: list[dict[str, Any]] = []
    for image_id, path, raw, problems in entries:
        item: dict[str, Any] = {"image_id": image_id, "path": path}
        if raw is None:
            item["problems"] = [[p.path, p.field, p.message] for p in problems]
        else:
            item["file"] = f"samples/{len(items):08d}.npz"
            flat = raw.masks.reshape(len(raw.masks), -1)
            np.savez(
                out / item["file"],
                image=raw.image,
                masks=np.packbits(flat, axis=1),
                mask_shape=np.array(raw.masks.shape, dtype=np.int64),
                fractions=raw.fractions,
                original_size=np.array(raw.original_size, dtype=np.int64),
            )
        items.append(item)
    return items


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Write a low-resolution cache of a dataset (resized images, np.packbits masks, a manifest) "
        "so repeated epochs skip JPEG and RLE decoding. Train on it with get_loaders(OUT)."
    )
    add_data_arguments(
        parser,
        root_help="data: SA-1B folder, .tar shards (folder, glob or brace pattern), COCO .json, or a folder "
                  "of images/ + labels/ (instance maps) or masks/NAME/*.png",
        size_help=f"training size, multiples of 16 (default {DEFAULT_IMAGE_SIZE[0]} {DEFAULT_IMAGE_SIZE[1]}); the cache "
                  "is read at this size only",
    )
    parser.add_argument("out", type=Path, help="cache folder to write (outside the data root)")
    parser.add_argument(
        "--workers", type=int, default=0, help="reader processes (default 0: read in this process)"
    )
    parser.add_argument(
        "--naive", action="store_true", help="decode full-resolution masks first (slow reference path)"
    )
    parser.add_argument("--inside-root", action="store_true", help="allow OUT inside the data root")
    parser.add_argument("--frame", choices=("pad", "square"), default=SampleOptions.frame,
                        help="how images enter the frame: pad (keep the aspect ratio; SAM v1) or square "
                             "(fill it; SAM 2.1 models). Default: %(default)s")


def run(args: argparse.Namespace) -> int:
    manifest = prepare_cache(
        args.root,
        args.out,
        image_size=tuple(args.image_size),
        image_dir=args.image_dir,
        fast=not args.naive,
        frame=args.frame,
        num_workers=args.workers,
        allow_inside_root=args.inside_root,
    )
    items = json.loads(manifest.read_text())["items"]
    bad = [item for item in items if "file" not in item]
    print(f"wrote {len(items) - len(bad)} samples to {args.out} ({args.image_size[0]}x{args.image_size[1]})")
    if bad:
        print(
            f"{len(bad)} bad samples left out (listed in {manifest.name}); run 'lora-sam check-data {args.root}'"
        )
    return 0
