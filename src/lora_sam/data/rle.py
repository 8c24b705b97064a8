"""COCO run-length encoding (RLE) read straight into low-resolution masks.

A COCO RLE ``{"size": [h, w], "counts": ...}`` lists the lengths of alternating runs of 0s
and 1s (0s first) over the mask's pixels in column-major order (linear index ``col * h + row``).
``counts`` is either a list of ints (uncompressed) or COCO's compressed string: each count is
written in 5-bit groups, least significant first, as characters ``48 + group`` with bit 0x20
meaning "more groups follow" and bit 0x10 of the last group the sign; from the fourth count on,
each is stored as the difference to the count two places before it.

The fast path never builds a full-resolution mask: for an output pixel it needs only the one
source pixel that nearest-neighbour resizing reads (see ``nearest_grid``), and it finds that
pixel's run from the cumulative run boundaries. The naive path (``decode_naive``) decodes the
full mask with pycocotools and indexes it on the same grid; the two agree exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils


class RLEError(ValueError):
    """An RLE that cannot be decoded; ``index`` is its position in the batch, the message says why."""

    def __init__(self, message: str, index: int = 0) -> None:
        super().__init__(message)
        self.index = index


@dataclass(frozen=True)
class Runs:
    """Run lengths of M masks, concatenated: mask m's runs are ``lengths[starts[m]:starts[m + 1]]``.

    ``lengths`` int64 (R,), ``starts`` int64 (M + 1,); each mask's runs begin with a run of 0s.
    """

    lengths: np.ndarray
    starts: np.ndarray

    def __len__(self) -> int:
        return len(self.starts) - 1

    def mask(self, m: int) -> np.ndarray:
        """The run lengths of mask ``m``, int64."""
        return self.lengths[self.starts[m] : self.starts[m + 1]]

    def _per_mask_sum(self, values: np.ndarray) -> np.ndarray:
        total = np.concatenate(([0], np.cumsum(values)))
        return total[self.starts[1:]] - total[self.starts[:-1]]

    def run_index(self) -> np.ndarray:
        """Index of each run within its mask, int64 (R,); odd indices are runs of 1s."""
        return np.arange(len(self.lengths)) - np.repeat(self.starts[:-1], np.diff(self.starts))

    def totals(self) -> np.ndarray:
        """Pixels covered by each mask's runs, int64 (M,)."""
        return self._per_mask_sum(self.lengths)

    def areas(self) -> np.ndarray:
        """Pixels that are 1 in each mask, int64 (M,)."""
        return self._per_mask_sum(np.where(self.run_index() % 2 == 1, self.lengths, 0))

    def select(self, keep: np.ndarray | Sequence[bool]) -> Runs:
        """The masks where ``keep`` (bool (M,)) is true."""
        return Runs.concat([self.mask(m) for m in np.flatnonzero(np.asarray(keep, dtype=bool))])

    @staticmethod
    def concat(masks: Sequence[np.ndarray]) -> Runs:
        """Runs of masks given one run-length array each."""
        lengths = np.concatenate(masks).astype(np.int64) if len(masks) else np.zeros(0, dtype=np.int64)
        return Runs(lengths, np.concatenate(([0], np.cumsum([len(m) for m in masks], dtype=np.int64))))


def _string_at(char: int, ends: np.ndarray) -> int:
    """Index of the string holding character ``char`` of the joined strings (ending before ``ends``)."""
    return int(np.searchsorted(ends, char, side="right"))


def _decode_compressed(strings: Sequence[bytes]) -> Runs:
    ends = np.cumsum([len(s) for s in strings], dtype=np.int64)
    chars = np.frombuffer(b"".join(strings), dtype=np.uint8) - np.uint8(48)
    if not chars.size:
        return Runs(np.zeros(0, dtype=np.int64), np.zeros(len(strings) + 1, dtype=np.int64))
    if chars.max() > 63:
        raise RLEError(
            "counts has characters outside the compressed RLE alphabet ('0'..'o')",
            _string_at(int(np.argmax(chars > 63)), ends),
        )
    last_char = (chars & 0x20) == 0
    nonempty = np.flatnonzero(np.diff(np.concatenate(([0], ends))) > 0)
    truncated = nonempty[~last_char[ends[nonempty] - 1]]
    if truncated.size:
        raise RLEError("counts ends in the middle of a number (truncated string?)", int(truncated[0]))
    last = np.flatnonzero(last_char)
    first = np.concatenate(([0], last[:-1] + 1))
    length = last - first + 1
    if length.max() > 12:
        raise RLEError(
            "counts has a number longer than 12 characters",
            _string_at(int(last[np.argmax(length > 12)]), ends),
        )
    values = (chars[first] & 0x1F).astype(np.int64)
    for j in range(1, int(length.max())):
        longer = np.flatnonzero(length > j)
        values[longer] |= (chars[first[longer] + j] & 0x1F).astype(np.int64) << (5 * j)
    negative = (chars[last] & 0x10) != 0
    values[negative] -= np.int64(1) << (5 * length[negative])
    numbers = np.concatenate(([0], np.cumsum(last_char, dtype=np.int64)))
    runs = Runs(values, numbers[np.concatenate(([0], ends))])
    per_string = np.diff(runs.starts)
    k = runs.run_index()
    for parity, chain_sizes in ((1, per_string // 2), (0, np.maximum(per_string - 1, 0) // 2)):
        chain = np.flatnonzero((k & 1 == parity) & (k >= 1))
        total = np.concatenate(([0], np.cumsum(values[chain])))
        base = total[np.concatenate(([0], np.cumsum(chain_sizes)))[:-1]]
        values[chain] = total[1:] - np.repeat(base, chain_sizes)
    if values.size and values.min() < 0:
        owner = np.searchsorted(runs.starts, np.argmin(values), side="right") - 1
        raise RLEError("counts decodes to a negative run length", int(owner))
    return runs


def decode_many(counts: Sequence[str | bytes | Sequence[int]]) -> Runs:
    """Run lengths of many masks from compressed (str / bytes) or uncompressed (list) counts.

    Compressed strings are decoded together in one vectorised pass. Raises ``RLEError`` whose
    ``index`` is the first bad entry.
    """
    if all(isinstance(c, str | bytes) for c in counts):
        try:
            return _decode_compressed([c.encode("ascii") if isinstance(c, str) else bytes(c) for c in counts])
        except UnicodeEncodeError as exc:
            index = next(i for i, c in enumerate(counts) if isinstance(c, str) and not c.isascii())
            raise RLEError("counts is not ASCII", index) from exc
    masks = []
    for i, c in enumerate(counts):
        try:
            masks.append(
                decode_many([c]).lengths
                if isinstance(c, str | bytes)
                else np.asarray(c, np.int64).reshape(-1)
            )
        except RLEError as exc:
            raise RLEError(str(exc), i) from exc
        except OverflowError as exc:
            raise RLEError("counts has a run length too large for int64", i) from exc
        if masks[-1].size and masks[-1].min() < 0:
            raise RLEError("counts has a negative run length", i)
    return Runs.concat(masks)


def decode_counts(counts: str | bytes | Sequence[int]) -> np.ndarray:
    """Run lengths, int64 (R,), of one mask's compressed or uncompressed counts."""
    return decode_many([counts]).lengths


def nearest_grid(source: int, target: int) -> np.ndarray:
    """Source index read by each of ``target`` output pixels, int64 (target,).

    Output pixel ``x`` covers source interval ``[x, x + 1) * source / target``; it reads the
    source pixel containing the interval's centre, ``floor((x + 0.5) * source / target)``,
    computed exactly in integers.
    """
    x = np.arange(target, dtype=np.int64)
    return np.minimum(((2 * x + 1) * source) // (2 * target), source - 1)


FRAMES = ("pad", "square")
"""How an image enters the training frame (H, W): ``pad`` resized by one scale into it and zero padded right
and bottom (SAM v1's ``ResizeLongestSide``); ``square`` resized to fill it, each axis by its own scale
(SAM 2's ``SAM2ImagePredictor``: the aspect ratio is not kept)."""


def resize_shape(size: tuple[int, int], image_size: tuple[int, int], frame: str) -> tuple[int, int]:
    """(h, w) of an (h0, w0) image resized by ``s = min(H / h0, W / w0)`` into ``image_size`` (H, W); with
    ``frame="square"`` (H, W) itself."""
    if frame == "square":
        return tuple(image_size)  # type: ignore[return-value]
    (h0, w0), (height, width) = size, image_size
    scale = min(height / h0, width / w0)
    return max(1, min(height, int(h0 * scale + 0.5))), max(1, min(width, int(w0 * scale + 0.5)))


def sample_runs(
    runs: Runs, size: tuple[int, int], out_size: tuple[int, int], pad_to: tuple[int, int] | None = None
) -> np.ndarray:
    """The masks of ``runs`` (each over ``size`` = (h0, w0)) resized nearest to ``out_size`` = (h, w).

    Each mask's runs must cover h0 * w0 pixels (``Runs.totals``). Returns bool (M, h, w), or
    (M, H, W) zero padded right and bottom for ``pad_to`` = (H, W), equal to ``decode_naive``. It uses the run boundaries only: taken column by column (each
    source column once), the output pixels read non-decreasing source linear indices, so
    ``searchsorted`` gives how many output pixels lie before each run boundary, and the output
    is the alternating 0 / 1 segments between those positions.
    """
    (h0, w0), (h, w) = size, out_size
    height, width = pad_to or out_size
    out = np.zeros((len(runs), height, width), dtype=bool)
    per_mask = np.diff(runs.starts)
    if per_mask.size and per_mask.min() < 1:
        raise RLEError("counts is empty", int(np.argmin(per_mask)))
    if not len(runs):
        return out
    rows = nearest_grid(h0, h)
    cols, col_of_output = np.unique(nearest_grid(w0, w), return_inverse=True)
    queries = (cols[:, None] * h0 + rows[None, :]).reshape(-1)
    total = np.cumsum(runs.lengths)
    run_ends = total - np.repeat(total[runs.starts[:-1]] - runs.lengths[runs.starts[:-1]], per_mask)
    run_ends[runs.starts[1:] - 1] = h0 * w0
    positions = np.searchsorted(queries, run_ends)
    starts = np.empty_like(positions)
    starts[1:] = positions[:-1]
    starts[runs.starts[:-1]] = 0
    segment = positions - starts
    value = (runs.run_index() & 1).astype(bool)
    keep = segment > 0
    flat = np.repeat(value[keep], segment[keep]).reshape(len(runs), cols.size, h)
    if cols.size != w:
        flat = flat[:, col_of_output]
    out[:, :h, :w] = flat.transpose(0, 2, 1)
    return out


def to_pycocotools(segmentation: dict) -> dict:
    """A pycocotools RLE object (``counts`` as bytes) of a COCO RLE dict."""
    size = [int(v) for v in segmentation["size"]]
    counts = segmentation["counts"]
    if isinstance(counts, list):
        return mask_utils.frPyObjects({"size": size, "counts": counts}, size[0], size[1])
    return {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def decode_naive(segmentation: dict, out_size: tuple[int, int]) -> np.ndarray:
    """Reference path: the full-resolution mask from pycocotools, resized nearest; bool (h, w)."""
    full = mask_utils.decode(to_pycocotools(segmentation))
    h0, w0 = full.shape
    return full[np.ix_(nearest_grid(h0, out_size[0]), nearest_grid(w0, out_size[1]))].astype(bool)
