"""RLE decoding and the fast low-resolution path against pycocotools (full decode + nearest)."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils

from data_fixtures import shared_data
from lora_sam.data import rle


def _runs_of(mask: np.ndarray) -> np.ndarray:
    """Reference run lengths of a mask: column-major, starting with a run of 0s."""
    flat = mask.T.reshape(-1).astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    edges = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(edges)
    return np.concatenate(([0], runs)) if flat[0] else runs


def _encode(mask: np.ndarray) -> str:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode("ascii")


@st.composite
def _masks(draw: st.DrawFn) -> tuple[np.ndarray, tuple[int, int]]:
    h0, w0 = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    count = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["random", "blocks", "empty", "full"]))
    if kind == "random":
        masks = rng.random((count, h0, w0)) < rng.random()
    elif kind == "blocks":
        masks = np.zeros((count, h0, w0), bool)
        for m in masks:
            y, x = rng.integers(0, h0), rng.integers(0, w0)
            m[y : y + rng.integers(1, h0 + 1), x : x + rng.integers(1, w0 + 1)] = True
    else:
        masks = np.full((count, h0, w0), kind == "full")
    out = (draw(st.integers(1, 64)), draw(st.integers(1, 64)))
    return masks, out


@settings(max_examples=60, deadline=None)
@given(_masks())
def test_fast_path_equals_full_decode_then_resize(case: tuple[np.ndarray, tuple[int, int]]) -> None:
    masks, out = case
    counts = [_encode(m) for m in masks]
    runs = rle.decode_many(counts)
    for i, mask in enumerate(masks):
        assert np.array_equal(runs.mask(i), _runs_of(mask))
    assert np.array_equal(runs.totals(), [m.size for m in masks])
    assert np.array_equal(runs.areas(), [m.sum() for m in masks])
    fast = rle.sample_runs(runs, masks.shape[1:], out, pad_to=(out[0] + 2, out[1] + 3))
    assert fast.shape == (len(masks), out[0] + 2, out[1] + 3) and fast.dtype == bool
    assert not fast[:, out[0] :].any() and not fast[:, :, out[1] :].any()
    for i, mask in enumerate(masks):
        naive = rle.decode_naive({"size": list(mask.shape), "counts": counts[i]}, out)
        assert np.array_equal(fast[i, : out[0], : out[1]], naive)


def test_decode_naive_is_pycocotools_decode_sampled_at_pixel_centres() -> None:
    mask = np.random.default_rng(0).random((37, 53)) < 0.4
    out = (11, 20)
    small = rle.decode_naive({"size": [37, 53], "counts": _encode(mask)}, out)
    for y in range(out[0]):
        for x in range(out[1]):
            source_y = int(Fraction(2 * y + 1, 2) * 37 / out[0])
            source_x = int(Fraction(2 * x + 1, 2) * 53 / out[1])
            assert small[y, x] == mask[source_y, source_x]


def test_nearest_grid_reads_the_pixel_under_each_output_centre() -> None:
    for source, target in [(2060, 256), (1500, 186), (375, 160), (7, 20), (1, 5), (100, 100)]:
        grid = rle.nearest_grid(source, target)
        expected = [min(int(Fraction(2 * x + 1, 2) * source / target), source - 1) for x in range(target)]
        assert grid.tolist() == expected


def test_resize_shape_keeps_aspect_and_fits() -> None:
    assert rle.resize_shape((1500, 2250), (160, 256), "pad") == (160, 240)
    assert rle.resize_shape((2060, 1500), (160, 256), "pad") == (160, 117)
    assert rle.resize_shape((375, 500), (160, 256), "pad") == (160, 213)
    assert rle.resize_shape((100, 1000), (160, 256), "pad") == (26, 256)


def test_uncompressed_counts_and_mixed_batches() -> None:
    mask = np.zeros((6, 5), bool)
    mask[1:4, 2:4] = True
    runs = _runs_of(mask)
    batch = rle.decode_many([runs.tolist(), _encode(mask)])
    assert np.array_equal(batch.mask(0), runs) and np.array_equal(batch.mask(1), runs)
    assert rle.decode_counts(runs.tolist()).tolist() == runs.tolist()


def test_large_and_negative_deltas_round_trip() -> None:
    mask = np.zeros((3000, 40), bool)
    mask[5:2990, 3] = True
    mask[100:101, 20:39] = True
    counts = _encode(mask)
    assert np.array_equal(rle.decode_counts(counts), _runs_of(mask))


@pytest.mark.parametrize(
    "bad,reason",
    [
        ("0a\x7f", "alphabet"),
        ("P", "middle of a number"),
        ("P" * 12 + "1", "longer than 12"),
        ("@", "negative"),
        ("0\u00e9", "ASCII"),
    ],
)
def test_bad_counts_name_the_entry(bad: str, reason: str) -> None:
    with pytest.raises(rle.RLEError, match=reason) as info:
        rle.decode_many(["02", _encode(np.ones((2, 2), bool)), bad])
    assert info.value.index == 2


def test_negative_uncompressed_counts() -> None:
    with pytest.raises(rle.RLEError, match="negative") as info:
        rle.decode_many([[1, 2], [3, -1]])
    assert info.value.index == 1


def test_real_sa1b_fast_equals_naive() -> None:
    root = shared_data()
    doc = json.loads((root / "sa1b" / "sa_1.json").read_text())
    segmentations = [a["segmentation"] for a in doc["annotations"]]
    runs = rle.decode_many([s["counts"] for s in segmentations])
    assert len(runs) == 65 and (runs.totals() == 2060 * 1500).all()
    assert runs.areas().tolist() == [a["area"] for a in doc["annotations"]]
    for out in [(160, 117), (64, 47), (300, 219)]:
        fast = rle.sample_runs(runs, (2060, 1500), out)
        naive = np.stack([rle.decode_naive(s, out) for s in segmentations])
        assert np.array_equal(fast, naive)


def test_empty_batches() -> None:
    assert len(rle.decode_many([])) == 0
    runs = rle.decode_many(["", "52"])
    assert runs.totals().tolist() == [0, 7] and runs.mask(0).size == 0
    assert rle.sample_runs(rle.decode_many([]), (5, 5), (3, 3), pad_to=(4, 4)).shape == (0, 4, 4)
    with pytest.raises(rle.RLEError, match="empty") as info:
        rle.sample_runs(runs, (1, 7), (1, 3))
    assert info.value.index == 0
