"""The prepared low-resolution cache returns the same samples as its source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_fixtures import assert_same_sample, synth, write_shards
from lora_sam.cli import main
from lora_sam.data.annotations import BadSample, DataError
from lora_sam.data.datasets import CachedDataset
from lora_sam.data.loaders import SA1BFolder, detect_kind, get_loaders
from lora_sam.data.prepare import prepare_cache


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth(tmp_path_factory.mktemp("cache") / "data", images=5, size=(96, 128))


def test_cache_returns_the_source_samples(source: Path, tmp_path: Path) -> None:
    manifest = prepare_cache(source, tmp_path / "cache", image_size=(64, 96), progress=False)
    assert manifest.name == "lora_sam_cache.json" and detect_kind(tmp_path / "cache") == "cache"
    options = dict(masks_per_image=3, seed=4, min_mask_pixels=10, max_mask_fraction=0.5)
    cached = CachedDataset(tmp_path / "cache", **options)
    reference = SA1BFolder(source, image_size=(64, 96), **options)
    assert len(cached) == len(reference) == 5
    for epoch in (0, 3):
        for i in range(len(cached)):
            assert_same_sample(cached[(i, epoch)], reference[(i, epoch)])
    assert not any(p.name.startswith("lora_sam") for p in source.iterdir())


def test_cache_refuses_another_image_size(source: Path, tmp_path: Path) -> None:
    prepare_cache(source, tmp_path / "cache", image_size=(64, 96), progress=False)
    with pytest.raises(DataError, match=r"prepared at 64x96 but 160x256 was asked for.*--image-size 160 256"):
        CachedDataset(tmp_path / "cache", image_size=(160, 256))
    with pytest.raises(DataError, match="prepared at 64x96"):
        get_loaders(tmp_path / "cache", num_workers=0)
    train, _ = get_loaders(tmp_path / "cache", image_size=(64, 96), num_workers=0)
    assert next(iter(train))["image"].shape[1:] == (3, 64, 96)


def test_cache_is_never_written_into_the_data(source: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="inside the data root"):
        prepare_cache(source, source / "cache", progress=False)
    assert not (source / "cache").exists()
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a lora-sam cache"):
        prepare_cache(source, tmp_path / "stuff", progress=False)


def test_bad_samples_are_kept_as_bad(source: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name in ("sa_1.jpg", "sa_1.json", "sa_2.jpg"):
        (data / name).write_bytes((source / name).read_bytes())
    (data / "sa_2.json").write_text("{not json")
    prepare_cache(data, tmp_path / "cache", progress=False)
    cached = CachedDataset(tmp_path / "cache")
    assert not isinstance(cached[0], BadSample)
    bad = cached[1]
    assert isinstance(bad, BadSample) and bad.path.endswith("sa_2.json") and "not valid JSON" in bad.reason
    with pytest.raises(DataError, match="sa_2.json"):
        CachedDataset(tmp_path / "cache", strict=True)[1]


def test_cache_from_shards_and_cli(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shards = write_shards(source, tmp_path / "tars", per_shard=2)
    assert main(["prepare", str(shards[0].parent), str(tmp_path / "cache"), "--image-size", "64", "96"]) == 0
    assert "wrote 5 samples" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "cache" / "lora_sam_cache.json").read_text())
    assert manifest["image_size"] == [64, 96] and len(manifest["items"]) == 5
    cached = CachedDataset(tmp_path / "cache")
    reference = SA1BFolder(source, image_size=(64, 96))
    by_id = {cached.image_id(i): cached[i] for i in range(len(cached))}
    for i in range(len(reference)):
        assert_same_sample(by_id[reference.image_id(i)], reference[i])
    assert main(["prepare", str(source), str(source / "inside")]) == 2
