"""Map-style datasets of SA-1B folders, COCO instances files and prepared caches.

Every dataset returns, per image, the sample dict of ``docs/contracts.md``, or a ``BadSample``
for an image that cannot be used (``strict=True`` raises ``DataError`` instead). An undamaged
image whose masks are all dropped by the size filters is a ``BadSample`` even when strict.
The targets of a sample depend only on (seed, epoch, image_id): index with ``(index, epoch)``
(what ``EpochSampler`` yields) or call ``set_epoch``.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from lora_sam.data.annotations import (
    BadSample,
    DataError,
    ImageAnnotations,
    Problem,
    errors,
    load_json,
    parse_coco,
    parse_sa1b,
)
from lora_sam.data.samples import Raw, SampleOptions, finish, read_raw

CACHE_MANIFEST = "lora_sam_cache.json"  # the manifest that marks a folder as a prepared cache
FORMAT_VERSION = 1  # of the cache layout written by ``lora-sam prepare``


def _describe(problem: Problem, path: str) -> str:
    if problem.path != path:
        return str(problem)
    return f"{problem.field}: {problem.message}" if problem.field else problem.message


def bad_sample(path: str, problems: Sequence[Problem]) -> BadSample:
    """A ``BadSample`` whose reason lists the problems (their file named when it is not ``path``)."""
    return BadSample(path, "; ".join(_describe(p, path) for p in problems))


def data_error(problems: Sequence[Problem]) -> DataError:
    """The ``DataError`` of the error problems among ``problems``, one per line."""
    return DataError("\n".join(str(p) for p in errors(problems)))


def to_sample(
    path: str, raw: Raw | None, problems: Sequence[Problem], options: SampleOptions, epoch: int, *, strict: bool
) -> dict | BadSample:
    """The sample of ``raw``, or a ``BadSample`` of ``path`` (``DataError`` when ``strict``) if a problem is an error."""
    bad = errors(problems)
    if bad:
        if strict:
            raise data_error(bad)
        return bad_sample(path, bad)
    assert raw is not None
    return finish(raw, options, epoch)


def read_sa1b(
    json_source: Path | bytes | None,
    image_source: Path | bytes | None,
    json_path: str,
    image_path: str,
    image_id: str,
    options: SampleOptions,
    *,
    check_sa1b_fields: bool,
) -> tuple[Raw | None, list[Problem]]:
    """The raw image and masks of one SA-1B JSON + JPEG pair, and its problems.

    A ``None`` source is a file missing from a tar shard (a missing file of a folder is a
    ``Path`` that does not exist); the image is not read when it is missing.
    """
    annotations = None
    if json_source is None:
        problems = [Problem(json_path, "", "missing from the shard")]
    else:
        doc, problems = load_json(json_source, json_path)
        if doc is not None:
            annotations, parse_problems = parse_sa1b(doc, json_path, image_id=image_id)
            problems += parse_problems
    if image_source is None:
        return None, [*problems, Problem(image_path, "", "missing from the shard")]
    raw, read_problems = read_raw(
        annotations, image_source, json_path, image_path, options, check_sa1b_fields=check_sa1b_fields
    )
    return raw, problems + read_problems


class SampleDataset(Dataset):
    """Base class: ``read(i)`` gives the raw image and masks and the problems of item ``i``.

    Args:
        options: how samples are made (``samples.SampleOptions``: image_size, masks_per_image,
            max_mask_fraction, min_mask_pixels, seed, fast); any of its fields may be given by name
            instead (``SA1BFolder(root, image_size=(64, 96))``) and wins over ``options``'.
        strict: raise ``DataError`` on a bad sample instead of returning ``BadSample``.
    """

    def __init__(self, options: SampleOptions | None = None, *, strict: bool = False, **fields: Any) -> None:
        self.options = replace(options or SampleOptions(), **fields)
        self.strict = strict
        self.epoch = 0
        self.items: list[Any] = []
        self.check_fields = False

    def __len__(self) -> int:
        return len(self.items)

    def path(self, index: int) -> str:
        """The file a problem of item ``index`` is reported against."""
        raise NotImplementedError

    def image_id(self, index: int) -> str:
        """A stable id of item ``index`` (used for the train / val split and the target draws)."""
        raise NotImplementedError

    def read(self, index: int) -> tuple[Raw | None, list[Problem]]:
        """The raw image and masks of item ``index`` (``None`` if any problem is an error) and its problems.

        With ``check_fields`` set (``check-data`` sets it) the problems also cover fields training
        never reads (SA-1B bbox and area), as warnings.
        """
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Draw the targets of plain integer indices as in ``epoch``."""
        self.epoch = int(epoch)

    def subset(self, indices: Sequence[int]) -> SampleDataset:
        """A copy holding only the given items, in that order."""
        part = copy.copy(self)
        part.items = [self.items[i] for i in indices]
        return part

    def __getitem__(self, key: int | tuple[int, int]) -> dict | BadSample:
        index, epoch = (int(key[0]), int(key[1])) if isinstance(key, tuple | list) else (int(key), self.epoch)
        raw, problems = self.read(index)
        return to_sample(self.path(index), raw, problems, self.options, epoch, strict=self.strict)


def _sa1b_stems(root: Path) -> list[Path]:
    found = {p.with_suffix("") for p in root.rglob("sa_*") if p.suffix in (".jpg", ".json") and p.is_file()}
    return sorted(found, key=lambda p: (str(p.parent), len(p.name), p.name))


class SA1BFolder(SampleDataset):
    """Every ``sa_*.jpg`` + ``sa_*.json`` pair anywhere under ``root``; image ids are the stems (``sa_1``).

    A file without its partner is still an item, so the missing one is reported. ``options``:
    see ``SampleDataset``.
    """

    def __init__(self, root: str | Path, **options: Any) -> None:
        super().__init__(**options)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"SA-1B folder {self.root} does not exist")
        self.items = _sa1b_stems(self.root)
        if not self.items:
            raise FileNotFoundError(
                f"{self.root}: no sa_*.jpg / sa_*.json files found (searched recursively)"
            )

    def path(self, index: int) -> str:
        return str(self.items[index].with_suffix(".json"))

    def image_id(self, index: int) -> str:
        return self.items[index].name

    def read(self, index: int) -> tuple[Raw | None, list[Problem]]:
        stem = self.items[index]
        json_path, image_path = stem.with_suffix(".json"), stem.with_suffix(".jpg")
        return read_sa1b(
            json_path,
            image_path,
            str(json_path),
            str(image_path),
            stem.name,
            self.options,
            check_sa1b_fields=self.check_fields,
        )


class CocoInstances(SampleDataset):
    """The annotated images of a COCO instances JSON (polygons, compressed and uncompressed RLE).

    Args:
        json_path: the instances JSON.
        image_dir: folder of the images' ``file_name`` (default: the JSON's folder).
        options: see ``SampleDataset``.

    Images without annotations are left out (``file_problems`` lists them with the file's other
    problems); an image with a malformed annotation is a bad sample.
    """

    def __init__(self, json_path: str | Path, image_dir: str | Path | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.json_path = Path(json_path)
        self.image_dir = Path(image_dir) if image_dir is not None else self.json_path.parent
        doc, problems = load_json(self.json_path, str(self.json_path))
        images: list[ImageAnnotations] = []
        if doc is not None:
            images, problems = parse_coco(doc, str(self.json_path))
        if doc is None or (not images and errors(problems)):
            raise data_error(problems)
        self.file_problems = problems
        if errors(problems):
            if self.strict:
                raise data_error(problems)
            warnings.warn(
                f"{self.json_path}: {len(errors(problems))} problems (run 'lora-sam check-data {self.json_path}')",
                stacklevel=2,
            )
        self.items = [record for record in images if record.segments or record.problems]

    def path(self, index: int) -> str:
        return str(self.image_dir / (self.items[index].file_name or ""))

    def image_id(self, index: int) -> str:
        return self.items[index].image_id

    def read(self, index: int) -> tuple[Raw | None, list[Problem]]:
        record = self.items[index]
        image_path = self.image_dir / (record.file_name or "")
        return read_raw(
            record, image_path, str(self.json_path), str(image_path), self.options, check_sa1b_fields=False
        )


class CachedDataset(SampleDataset):
    """Samples read from a cache written by ``prepare_cache``; equal to the source dataset's.

    Args:
        root: the cache folder.
        image_size: must equal the cache's (H, W); ``None`` takes the cache's.
        options: as ``SampleDataset`` (``fast`` is ignored: the masks are already resized).
    """

    def __init__(
        self, root: str | Path, *, image_size: tuple[int, int] | None = None, **options: Any
    ) -> None:
        self.root = Path(root)
        manifest_path = self.root / CACHE_MANIFEST
        try:
            manifest = json.loads(manifest_path.read_text())
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"{manifest_path} not found; write the cache with 'lora-sam prepare ROOT {root}'"
            ) from exc
        if manifest.get("version") != FORMAT_VERSION:
            raise DataError(
                f"{manifest_path}: version: cache format {manifest.get('version')}, expected {FORMAT_VERSION}; prepare it again"
            )
        cached = tuple(manifest["image_size"])
        if image_size is not None and tuple(image_size) != cached:
            raise DataError(
                f"{manifest_path}: image_size: the cache was prepared at {cached[0]}x{cached[1]} but "
                f"{image_size[0]}x{image_size[1]} was asked for; use image_size={cached} or run "
                f"'lora-sam prepare {manifest['source']} OUT --image-size {image_size[0]} {image_size[1]}'"
            )
        frame = manifest.get("frame", "pad")
        if options.get("frame", frame) != frame:
            raise DataError(
                f"{manifest_path}: frame: the cache was prepared with frame={frame!r} but {options['frame']!r} was "
                f"asked for; run 'lora-sam prepare {manifest['source']} OUT --frame {options['frame']}'")
        super().__init__(image_size=cached, **{**options, "frame": frame})
        self.items = manifest["items"]

    def path(self, index: int) -> str:
        return self.items[index]["path"]

    def image_id(self, index: int) -> str:
        return self.items[index]["image_id"]

    def read(self, index: int) -> tuple[Raw | None, list[Problem]]:
        item = self.items[index]
        if "file" not in item:
            return None, [Problem(*p) for p in item["problems"]]
        file = self.root / item["file"]
        try:
            with np.load(file) as data:
                count, h, w = (int(v) for v in data["mask_shape"])
                masks = np.unpackbits(data["masks"], axis=1, count=h * w).reshape(count, h, w).view(bool)
                original = tuple(int(v) for v in data["original_size"])
                raw = Raw(data["image"], masks, data["fractions"], original, item["image_id"], item["path"])
        except (OSError, KeyError, ValueError) as exc:
            return None, [
                Problem(str(file), "", f"cannot read the cached sample ({exc}); prepare the cache again")
            ]
        return raw, []
