"""``lora-sam nuclei``: real annotated nuclei in one command, from an installed package's files.

The ``stardist`` wheel (BSD-3-Clause) ships one fluorescence image of the 2018 Data Science Bowl with its
instance labels: ``stardist/data/images/img2d.tif`` and ``mask2d.tif``, 512x512 px, 125 nuclei (BBBC038,
Caicedo et al., "Nucleus segmentation across imaging experiments: the 2018 Data Science Bowl", Nature Methods
16, 2019). This command reads the two files where the package is installed (``stardist`` itself, which pulls
in TensorFlow-dependent code, is never imported) and writes them as an instance-label folder
(``lora_sam.data.labels``) cut into fixed tiles, with a fixed train / validation split::

    OUT/train/images/dsb2018_r{row}_c{col}.png   the image's tile (8 bit: its values are 0..235)
    OUT/train/labels/dsb2018_r{row}_c{col}.png   the tile of the label map, the original nucleus ids kept
    OUT/val/...                                  the same for the validation tiles
    OUT/nuclei.json                              source files and sha256, tiles, split, nuclei per tile

With the default 256 px tiles the image gives 4 tiles in row-major order; the last one (bottom right) is the
validation split, the 3 others train. A nucleus cut by a tile border appears in both tiles, under its own id.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image

from lora_sam.errors import MissingExtra, UserError
from lora_sam.io import atomic_path, file_sha256

__all__ = ["NUCLEI_EXTRA", "add_arguments", "run", "stardist_files", "write_nuclei"]

NUCLEI_EXTRA = "pip install 'lora_sam[nuclei]'"
FILES = ("images/img2d.tif", "images/mask2d.tif")
NAME = "dsb2018"


def stardist_files() -> tuple[Path, Path]:
    """The image and label files of the installed ``stardist`` wheel (found without importing it)."""
    spec = importlib.util.find_spec("stardist")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtra(f"the real nuclei come from the stardist package's files, which is not installed: "
                           f"{NUCLEI_EXTRA}")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    paths = tuple(data / name for name in FILES)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"the installed stardist package has no {', '.join(missing)}: reinstall it ({NUCLEI_EXTRA})")
    return paths  # type: ignore[return-value]


def _tiles(shape: tuple[int, int], tile: int) -> list[tuple[int, int]]:
    height, width = shape
    if tile < 32 or height % tile or width % tile:
        raise UserError(f"--tile {tile}: the image is {height}x{width} px; pass a side of at least 32 that divides "
                        f"both (256, 128, 512)")
    return [(r, c) for r in range(0, height, tile) for c in range(0, width, tile)]


def write_nuclei(out: str | Path, *, tile: int = 256) -> dict[str, Any]:
    """Write the DSB image as tiles of ``tile`` px into ``out/train`` and ``out/val`` (the module docstring);
    returns what ``out/nuclei.json`` records."""
    image_path, mask_path = stardist_files()
    image, labels = tifffile.imread(image_path), tifffile.imread(mask_path)
    if image.shape != labels.shape or image.ndim != 2 or image.max() > 255:
        raise UserError(f"{image_path} / {mask_path}: expected one 2-D image of 8-bit values and its label map "
                        f"of the same size, found {image.shape} (max {image.max()}) and {labels.shape}")
    corners = _tiles(image.shape, tile)
    out = Path(out)
    record: dict[str, Any] = {
        "source": {"package": "stardist", "files": {p.name: file_sha256(p) for p in (image_path, mask_path)},
                   "dataset": "2018 Data Science Bowl (BBBC038), Caicedo et al., Nature Methods 16 (2019)"},
        "tile": tile, "nuclei": int(len(np.unique(labels)) - 1), "tiles": []}
    for index, (row, col) in enumerate(corners):
        split = "val" if index == len(corners) - 1 else "train"
        name = f"{NAME}_r{row}_c{col}"
        crop = (slice(row, row + tile), slice(col, col + tile))
        ids = np.unique(labels[crop])
        for folder, pixels in (("images", image[crop].astype(np.uint8)), ("labels", labels[crop].astype(np.uint16))):
            (out / split / folder).mkdir(parents=True, exist_ok=True)
            with atomic_path(out / split / folder / f"{name}.png") as tmp:
                Image.fromarray(pixels).save(tmp, format="PNG")
        record["tiles"].append({"name": name, "split": split, "row": row, "col": col,
                                "nuclei": int(len(ids[ids > 0]))})
    with atomic_path(out / "nuclei.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    return record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Write the real annotated nuclei image that the stardist package ships (2018 Data Science "
                          "Bowl, 512x512 px, 125 nuclei) as an instance-label folder of fixed tiles with a fixed "
                          f"train / validation split: OUT/train, OUT/val, OUT/nuclei.json. Needs {NUCLEI_EXTRA}")
    parser.add_argument("out", type=Path, help="the folder to write")
    parser.add_argument("--tile", type=int, default=256, help="tile side in pixels (default 256: 3 train tiles, 1 val)")


def run(args: argparse.Namespace) -> int:
    record = write_nuclei(args.out, tile=args.tile)
    split = {s: [t for t in record["tiles"] if t["split"] == s] for s in ("train", "val")}
    print(f"wrote {args.out}: {record['nuclei']} nuclei in {len(record['tiles'])} tiles of {record['tile']} px "
          f"(train {len(split['train'])} tiles, {sum(t['nuclei'] for t in split['train'])} nuclei; val "
          f"{len(split['val'])} tile, {sum(t['nuclei'] for t in split['val'])} nuclei)")
    return 0
