"""Training and validation DataLoaders from a data root: ``get_loaders``.

A root is an SA-1B folder (``sa_*.jpg`` + ``sa_*.json`` anywhere below), SA-1B ``.tar`` shards
(a folder, a glob or a brace pattern), a COCO instances ``.json`` (or a folder holding
``annotations.json`` / ``instances*.json``), an instance-label folder (``images/`` + ``labels/``
instance maps or ``masks/NAME/*.png``, see ``labels``), or a cache written by ``lora-sam prepare``.
Samples and batches follow ``docs/contracts.md``.
"""

from __future__ import annotations

import argparse
import glob
import os
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from lora_sam.data.annotations import BadSample, DataError, Problem
from lora_sam.data.datasets import CACHE_MANIFEST, CachedDataset, CocoInstances, SA1BFolder, SampleDataset
from lora_sam.data.labels import InstanceFolder, instance_layout
from lora_sam.data.samples import SampleOptions, collate
from lora_sam.data.shards import SA1BShards, expand_shards, split_score
from lora_sam.models.checkpoints import DEFAULT_IMAGE_SIZE
from lora_sam.settings import VAL_FRACTION

ENV_VAR = "LORA_SAM_DATA"
DEFAULT_ROOT = "data"
Kind = Literal["sa1b", "shards", "coco", "labels", "masks", "cache"]

__all__ = [
    "BadSample",
    "CocoInstances",
    "DataError",
    "EpochSampler",
    "InstanceFolder",
    "LoaderOptions",
    "split_folders",
    "Problem",
    "SA1BFolder",
    "SA1BShards",
    "SampleDataset",
    "SampleOptions",
    "collate",
    "detect_kind",
    "get_loaders",
    "open_dataset",
    "resolve_root",
    "split_indices",
]


def _is_pattern(root: str) -> bool:
    return glob.has_magic(root) or "{" in root or "::" in root


def resolve_root(root: str | Path | None = None) -> str:
    """The data root: ``root``, else ``$LORA_SAM_DATA``, else ``./data``; it must exist."""
    if root is not None:
        chosen, source = str(root), "the root argument"
    elif os.environ.get(ENV_VAR):
        chosen, source = os.environ[ENV_VAR], f"${ENV_VAR}"
    else:
        chosen, source = DEFAULT_ROOT, "the default folder"
    if Path(chosen).exists() or (
        _is_pattern(chosen) and any(Path(u).exists() for u in expand_shards(chosen))
    ):
        return chosen
    raise FileNotFoundError(
        f"no data at {chosen!r} (from {source}). The data root is taken from the root argument, then the "
        f"environment variable {ENV_VAR}, then the folder '{DEFAULT_ROOT}' in the current directory "
        f"({Path.cwd()}). Pass root=..., set {ENV_VAR}=/path/to/data, or make synthetic data with "
        "'lora-sam synth data --images 64'."
    )


def detect_kind(root: str | Path) -> Kind:
    """What ``root`` holds: ``"cache"``, ``"labels"`` / ``"masks"`` (``images/`` + ``labels/`` or
    ``masks/``), ``"sa1b"`` (folder of pairs), ``"shards"`` or ``"coco"``."""
    spec = str(root)
    path = Path(spec)
    if path.is_file():
        if path.suffix == ".json" and not path.name.startswith("sa_"):
            return "coco"
        if path.suffix == ".tar":
            return "shards"
    elif path.is_dir():
        if (path / CACHE_MANIFEST).is_file():
            return "cache"
        if (layout := instance_layout(path)) is not None:
            return layout
        if next((p for p in path.rglob("sa_*") if p.suffix in (".jpg", ".json")), None) is not None:
            return "sa1b"
        if next(path.rglob("*.tar"), None) is not None:
            return "shards"
        if _coco_json(path) is not None:
            return "coco"
    elif _is_pattern(spec) and spec.endswith(".tar"):
        return "shards"
    raise DataError(
        f"{spec}: cannot tell the data format. Expected a folder of sa_*.jpg + sa_*.json pairs, a folder, "
        f"glob or brace pattern of .tar shards, a COCO instances .json, a folder with images/ and labels/ "
        f"(instance maps) or masks/NAME/*.png, or a cache folder with {CACHE_MANIFEST} "
        "(written by 'lora-sam prepare')."
    )


def _coco_json(folder: Path) -> Path | None:
    candidates = sorted(folder.glob("instances*.json")) + sorted(folder.glob("annotations.json"))
    return candidates[0] if candidates else None


def open_dataset(root: str | Path, *, image_dir: str | Path | None = None, **options: Any) -> Dataset:
    """The dataset of ``root`` (see ``detect_kind``); ``options`` as for ``SampleDataset``."""
    kind = detect_kind(root)
    if kind == "cache":
        return CachedDataset(root, **options)
    if kind == "sa1b":
        return SA1BFolder(root, **options)
    if kind == "shards":
        return SA1BShards(root, **options)
    if kind in ("labels", "masks"):
        return InstanceFolder(root, kind, **options)
    path = Path(root)
    return CocoInstances(path if path.is_file() else _coco_json(path), image_dir=image_dir, **options)


def split_folders(root: str | Path) -> tuple[Path, Path] | None:
    """``(root/train, root/val)`` when ``root`` is no dataset itself but holds one in each (a fixed split, as
    ``lora-sam nuclei`` writes it: ``get_loaders`` then trains on the first and validates on the second, whatever
    ``val_fraction``); else None."""
    path = Path(root)
    if not path.is_dir() or not (path / "train").is_dir() or not (path / "val").is_dir():
        return None
    try:
        detect_kind(path)
        return None
    except DataError:
        pass
    for part in ("train", "val"):
        detect_kind(path / part)  # each must be a dataset: its own error otherwise
    return path / "train", path / "val"


def split_indices(ids: list[str], val_fraction: float) -> tuple[list[int], list[int]]:
    """Train and val indices of ``ids`` by a stable hash of each id.

    Adding images never moves others between splits. With two or more images and
    ``val_fraction > 0`` both splits hold at least one image.
    """
    scores = [split_score(i) for i in ids]
    if val_fraction <= 0 or len(ids) < 2:
        return list(range(len(ids))), []
    val = {i for i, score in enumerate(scores) if score < val_fraction}
    if not val:
        val = {int(np.argmin(scores))}
    if len(val) == len(ids):
        val.discard(int(np.argmax(scores)))
    return [i for i in range(len(ids)) if i not in val], sorted(val)


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, epoch)`` for every index, shuffled from (seed, epoch) when ``shuffle``.

    The dataset draws a sample's targets from the epoch it receives, so workers (persistent or
    not) need no shared state. Each pass advances the epoch; ``set_epoch`` (called by
    Lightning) sets it explicitly.
    """

    def __init__(self, size: int, *, shuffle: bool = True, seed: int = 0) -> None:
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        self.epoch += 1
        order = range(self.size)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        return iter([(i, epoch) for i in order])


def add_data_arguments(parser: argparse.ArgumentParser, *, root_help: str, size_help: str) -> None:
    """The ``root``, ``--image-dir`` and ``--image-size`` arguments that ``prepare`` and ``check-data`` share."""
    parser.add_argument("root", help=root_help)
    parser.add_argument("--image-dir", type=Path, default=None,
                        help="COCO only: folder of the images (default: the JSON's folder)")
    parser.add_argument("--image-size", type=int, nargs=2, default=DEFAULT_IMAGE_SIZE, metavar=("H", "W"), help=size_help)


def default_workers() -> int:
    """DataLoader workers by default: ``min(4, cpu_count - 1)``, at least 0."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def seed_worker(worker_id: int) -> None:
    """Seed ``random`` and numpy in a DataLoader worker from its torch seed (OpenCV's threads: ``_loader_args``)."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def _shard_datasets(
    root: str, val_fraction: float, samples_per_epoch: int | None, options: dict[str, Any]
) -> tuple[IterableDataset, IterableDataset | None]:
    urls = expand_shards(root)
    if val_fraction <= 0:
        return SA1BShards(urls, samples_per_epoch=samples_per_epoch, **options), None
    if len(urls) < 2:
        train = SA1BShards(urls, split="train", val_fraction=val_fraction, samples_per_epoch=samples_per_epoch,
                           **options)
        return train, SA1BShards(urls, shuffle=False, split="val", val_fraction=val_fraction, **options)
    train_idx, val_idx = split_indices([Path(u).name for u in urls], val_fraction)
    train = SA1BShards([urls[i] for i in train_idx], samples_per_epoch=samples_per_epoch, **options)
    return train, SA1BShards([urls[i] for i in val_idx], shuffle=False, **options)


@dataclass(frozen=True)
class LoaderOptions:
    """How the data is split and batched (``get_loaders``; ``lora-sam fit --data.loader.batch_size 4``).

    Args:
        batch_size: images per batch.
        val_fraction: share of images (of shards, for two or more shards) held out for val, by a stable
            hash of the image id (shard name); at least one when there are two.
        num_workers: DataLoader workers (None: min(4, cpu_count - 1)); persistent when > 0.
        strict: raise DataError on a bad sample instead of skipping it.
        samples_per_epoch: tar shards only (set it for multi-GPU training on them): training samples per
            epoch over all DDP ranks, the same share per rank (SA1BShards); other roots ignore it.
        pin_memory: page-locked batches for a GPU (None: when CUDA is available).
    """

    batch_size: int = 2
    val_fraction: float = VAL_FRACTION
    num_workers: int | None = None
    strict: bool = False
    samples_per_epoch: int | None = None
    pin_memory: bool | None = None


_EXTRAS = ("image_dir", "shuffle_buffer")


def get_loaders(
    root: str | Path | None = None,
    loader: LoaderOptions | None = None,
    sample: SampleOptions | None = None,
    **fields: Any,
) -> tuple[DataLoader, DataLoader | None]:
    """Train and val DataLoaders of batches (``docs/contracts.md``) from a data root.

    Args:
        root: data root (see the module docstring); default ``$LORA_SAM_DATA``, then ``./data``.
        loader: how the data is split and batched (``LoaderOptions``).
        sample: how samples are made (``samples.SampleOptions``: image_size, masks_per_image, seed of the
            target draws and of the shuffle, ...).
        fields: any field of either group by name (``get_loaders(root, batch_size=4, image_size=(64, 96))``),
            winning over the group's; and ``image_dir`` (COCO), ``shuffle_buffer`` (shards).

    Returns:
        ``(train_loader, val_loader)``; train shuffles and draws new targets every epoch, val
        keeps file order and fixed targets. ``val_loader`` is ``None`` when ``val_fraction``
        is 0 or there is a single image.
    """
    root = resolve_root(root)
    loader, sample, extras = _groups(loader, sample, fields)
    options = {**asdict(sample), "strict": loader.strict, **extras}
    loader_args = _loader_args(loader, sample.seed)
    if (folders := split_folders(root)) is not None:  # a fixed split: train/ and val/ (lora-sam nuclei's)
        options.pop("shuffle_buffer", None)
        return _train_val(open_dataset(folders[0], **options), open_dataset(folders[1], **options), options["seed"],
                          loader_args)
    if detect_kind(root) == "shards":
        options.pop("image_dir", None)
        train, val = _shard_datasets(root, loader.val_fraction, loader.samples_per_epoch, options)
        return DataLoader(train, **loader_args), DataLoader(val, **loader_args) if val is not None else None
    options.pop("shuffle_buffer", None)
    return _map_loaders(root, loader.val_fraction, options, loader_args)


def _groups(loader: LoaderOptions | None, sample: SampleOptions | None,
            fields: dict[str, Any]) -> tuple[LoaderOptions, SampleOptions, dict[str, Any]]:
    """``get_loaders``' two groups with the fields given by name folded in, and the dataset extras."""
    names = {cls: {f.name for f in dataclass_fields(cls)} for cls in (LoaderOptions, SampleOptions)}
    unknown = sorted(set(fields) - names[LoaderOptions] - names[SampleOptions] - set(_EXTRAS))
    if unknown:
        raise TypeError(f"get_loaders got unknown options {unknown}; it takes the fields of LoaderOptions and "
                        f"SampleOptions, and {', '.join(_EXTRAS)}")
    loader = replace(loader or LoaderOptions(), **{k: v for k, v in fields.items() if k in names[LoaderOptions]})
    sample = replace(sample or SampleOptions(), **{k: v for k, v in fields.items() if k in names[SampleOptions]})
    return loader, sample, {k: v for k, v in fields.items() if k in _EXTRAS}


def _loader_args(loader: LoaderOptions, seed: int) -> dict[str, Any]:
    workers = default_workers() if loader.num_workers is None else loader.num_workers
    if workers > 0:
        # One OpenCV thread, set here before the workers fork, not in them: a forked worker that resized its
        # OpenCV pool (cv2.setNumThreads) hung when this process had run OpenCV's pool before (a test that
        # resized larger images first). The workers are the parallelism; each inherits the single thread.
        cv2.setNumThreads(1)
    return dict(batch_size=loader.batch_size, collate_fn=collate, num_workers=workers, persistent_workers=workers > 0,
                worker_init_fn=seed_worker, generator=torch.Generator().manual_seed(seed),
                pin_memory=torch.cuda.is_available() if loader.pin_memory is None else loader.pin_memory)


def _map_loaders(root: str, val_fraction: float, options: dict[str, Any],
                 loader_args: dict[str, Any]) -> tuple[DataLoader, DataLoader | None]:
    """``get_loaders`` for the map-style datasets (SA-1B folder, COCO, instance labels, cache): split by image id."""
    dataset = open_dataset(root, **options)
    assert isinstance(dataset, SampleDataset)
    train_idx, val_idx = split_indices([dataset.image_id(i) for i in range(len(dataset))], val_fraction)
    return _train_val(dataset.subset(train_idx), dataset.subset(val_idx) if val_idx else None, options["seed"],
                      loader_args)


def _train_val(train: Dataset, val: Dataset | None, seed: int,
               loader_args: dict[str, Any]) -> tuple[DataLoader, DataLoader | None]:
    """The train loader (shuffled per epoch from ``seed``) and the val loader (file order) of map-style datasets."""
    train_loader = DataLoader(train, sampler=EpochSampler(len(train), shuffle=True, seed=seed), **loader_args)
    return train_loader, DataLoader(val, shuffle=False, **loader_args) if val is not None else None
