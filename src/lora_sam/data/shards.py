"""SA-1B ``.tar`` shards read as streams, without extracting them (webdataset).

Each shard holds ``sa_{id}.jpg`` + ``sa_{id}.json`` pairs. Shards are split across DDP ranks
and DataLoader workers: by shard when there are at least as many shards as readers, else every
reader reads every shard and keeps every n-th sample. Shard order and a shuffle buffer are
drawn from (seed, epoch, reader), so runs reproduce.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import os
import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import torch.distributed as dist
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from lora_sam.data.annotations import BadSample, Problem
from lora_sam.data.datasets import read_sa1b, to_sample
from lora_sam.data.samples import Raw, SampleOptions
from lora_sam.settings import VAL_FRACTION


def expand_shards(urls_or_glob: str | Path | Sequence[str | Path]) -> list[str]:
    """Shard paths or URLs from a list, a brace pattern (``sa_{000000..000999}.tar``), globs, ``::``-joined, or a folder."""
    if isinstance(urls_or_glob, str | Path):
        spec = str(urls_or_glob)
        if Path(spec).is_dir():
            return sorted(str(p) for p in Path(spec).rglob("*.tar"))
        urls = []
        for part in wds.shardlists.expand_urls(spec):
            urls += sorted(glob.glob(part)) if glob.has_magic(part) else [part]
        return urls
    return [str(u) for u in urls_or_glob]


def split_score(key: str) -> float:
    """A stable pseudo-random number in [0, 1) of ``key`` (an image id or a shard name)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") / 2**64


def in_val_split(key: str, val_fraction: float) -> bool:
    """Whether ``key`` belongs to the val split; adding data never moves other keys."""
    return split_score(key) < val_fraction


def _rank_world() -> tuple[int, int] | None:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


def _placement(parent: tuple[int, int] | None = None) -> tuple[int, int, int, int]:
    """(rank, world size, DataLoader worker id, workers) of the calling reader.

    The rank comes from torch.distributed when initialised here, else from ``parent`` (the
    rank seen by the process that started this worker), else from ``RANK`` / ``WORLD_SIZE``.
    """
    env = (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))
    rank, world = _rank_world() or parent or env
    worker = get_worker_info()
    worker_id, workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
    return rank, world, worker_id, workers


def reader_info(parent: tuple[int, int] | None = None) -> tuple[int, int]:
    """(this reader's index, number of readers) over DDP ranks x DataLoader workers."""
    rank, world, worker_id, workers = _placement(parent)
    return rank * workers + worker_id, world * workers


def reader_quota(samples_per_epoch: int, parent: tuple[int, int] | None = None) -> int:
    """How many samples this reader yields per epoch so that every rank yields ``samples_per_epoch // world``.

    The rank's share is split over its DataLoader workers as evenly as possible; every rank
    has the same workers, so every rank gets the same number of batches.
    """
    _, world, worker_id, workers = _placement(parent)
    per_rank = samples_per_epoch // world
    return per_rank // workers + (1 if worker_id < per_rank % workers else 0)


def _shuffled(items: Iterator[dict], size: int, rng: random.Random) -> Iterator[dict]:
    buffer: list[dict] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = rng.randrange(size)
        yield buffer[i]
        buffer[i] = item
    rng.shuffle(buffer)
    yield from buffer


class SA1BShards(IterableDataset):
    """Samples (``docs/contracts.md``) streamed from SA-1B tar shards.

    Args:
        urls_or_glob: shard paths / URLs, a glob, a brace pattern or a folder of ``.tar`` files.
        shuffle: shuffle shard order and samples (train); ``False`` keeps file order (val).
        shuffle_buffer: samples held for shuffling (each about 1 MB of raw bytes for SA-1B).
        split: ``"train"`` or ``"val"`` keeps only the images whose id falls in that split
            (``in_val_split``); ``"all"`` keeps every image.
        val_fraction: the val share used by ``split``.
        samples_per_epoch: samples per epoch over all ranks. Each rank then yields exactly
            ``samples_per_epoch // world_size`` (going round its shards again when they hold
            fewer), so DDP ranks run the same number of steps: needed for multi-GPU training,
            where a rank that runs out of data first leaves the others waiting in a gradient
            all-reduce. ``None`` (default): one pass over this reader's shards, whose sizes differ.
        options: see ``SampleDataset`` (image_size, masks_per_image, ..., strict).

    Iterating again draws a new epoch; ``set_epoch(e)`` sets the next one explicitly.
    """

    def __init__(
        self,
        urls_or_glob: str | Path | Sequence[str | Path],
        *,
        shuffle: bool = True,
        shuffle_buffer: int = 100,
        split: Literal["all", "train", "val"] = "all",
        val_fraction: float = VAL_FRACTION,
        samples_per_epoch: int | None = None,
        options: SampleOptions | None = None,
        strict: bool = False,
        **fields: Any,
    ) -> None:
        self.urls = expand_shards(urls_or_glob)
        if not self.urls:
            raise FileNotFoundError(f"no .tar shards match {urls_or_glob!r}")
        self.options = replace(options or SampleOptions(), **fields)  # as SampleDataset's
        self.shuffle, self.shuffle_buffer = shuffle, shuffle_buffer
        self.split, self.val_fraction = split, val_fraction
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be a positive number of samples or None, got {samples_per_epoch}")
        self.samples_per_epoch = samples_per_epoch
        self.strict = strict
        self.epoch = 0
        self._iterations = 0
        self.check_fields = False
        self._parent_rank: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._iterations = int(epoch), 0

    def records(
        self, epoch: int = 0, handler: Callable[[Exception], bool] | None = None, *, round_: int = 0
    ) -> Iterator[dict]:
        """This reader's raw tar records ``{"__key__", "__url__", "jpg", "json"}`` for ``epoch``.

        ``handler`` gets each tar reading error and returns True to go on (default: raise when
        strict, else warn and go on). ``round_`` > 0: a further pass over the same shards in the
        same epoch (in another order), for ``samples_per_epoch``.
        """
        reader, readers = reader_info(self._parent_rank)
        shards = list(self.urls)
        if self.shuffle:
            random.Random(f"{self.options.seed}/{epoch}").shuffle(shards)
        stride, offset = 1, 0
        if len(shards) >= readers:
            shards = shards[reader::readers]  # the same shards in every round of an epoch
            if self.shuffle and round_:
                random.Random(f"{self.options.seed}/{epoch}/{reader}/{round_}").shuffle(shards)
        else:
            stride, offset = readers, reader
        if handler is None:
            handler = wds.reraise_exception if self.strict else wds.warn_and_continue
        stream = wds.tarfile_samples([{"url": url} for url in shards], handler=handler)
        for n, record in enumerate(stream):
            if n % stride != offset:
                continue
            key = Path(record["__key__"]).name
            if self.split != "all" and in_val_split(key, self.val_fraction) != (self.split == "val"):
                continue
            yield record

    def read_record(self, record: dict) -> tuple[str, Raw | None, list[Problem]]:
        """The path (``shard.tar:sa_1.json``), raw image and masks, and problems of a tar record."""
        key = Path(record["__key__"]).name
        prefix = f"{record['__url__']}:{key}"
        json_path = f"{prefix}.json"
        raw, problems = read_sa1b(
            record.get("json"),
            record.get("jpg"),
            json_path,
            f"{prefix}.jpg",
            key,
            self.options,
            check_sa1b_fields=self.check_fields,
        )
        return json_path, raw, problems

    def sample(self, record: dict, epoch: int) -> dict | BadSample:
        """The sample (or ``BadSample``) of one tar record."""
        path, raw, problems = self.read_record(record)
        return to_sample(path, raw, problems, self.options, epoch, strict=self.strict)

    def _round(self, epoch: int, round_: int) -> Iterator[dict]:
        records: Iterator[dict] = self.records(epoch, round_=round_)
        if self.shuffle and self.shuffle_buffer > 1:
            reader, _ = reader_info(self._parent_rank)
            key = f"{self.options.seed}/{epoch}/{reader}" + (f"/{round_}" if round_ else "")
            records = _shuffled(records, self.shuffle_buffer, random.Random(key))
        return records

    def __iter__(self) -> Iterator[dict | BadSample]:
        epoch = self.epoch + self._iterations
        self._iterations += 1
        sample_epoch = epoch if self.shuffle else 0
        quota = None
        if self.samples_per_epoch is not None:
            quota = reader_quota(self.samples_per_epoch, self._parent_rank)
        elif _placement(self._parent_rank)[1] > 1:
            warnings.warn("SA1BShards under DDP without samples_per_epoch: ranks read shards of different "
                          "sizes, and a rank that runs out first can leave the others waiting at the end "
                          "of an epoch; set samples_per_epoch (get_loaders(..., samples_per_epoch=N))",
                          RuntimeWarning, stacklevel=2)
        done = 0
        for round_ in itertools.count():  # one round without a quota; with one, rounds until it is met
            before = done
            for record in self._round(epoch, round_):
                if done == quota:
                    return
                yield self.sample(record, sample_epoch)
                done += 1
            if quota is None or done == quota:
                return
            if done == before:
                reader, readers = reader_info(self._parent_rank)
                raise ValueError(f"reader {reader} of {readers} (DDP ranks x DataLoader workers) has no samples in "
                                 f"{len(self.urls)} shard(s) (split {self.split!r}); use more shards or fewer "
                                 f"workers")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_parent_rank"] = _rank_world() or self._parent_rank
        return state
