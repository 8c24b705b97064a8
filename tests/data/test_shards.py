"""SA-1B tar shards read as streams: same samples as the folder, split across workers and ranks."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from torch.utils.data import DataLoader

from data_fixtures import assert_same_sample, synth, write_shards
from lora_sam.data.annotations import BadSample, DataError
from lora_sam.data.loaders import SA1BFolder, SA1BShards, collate, detect_kind, get_loaders
from lora_sam.data.shards import expand_shards


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("shards")
    folder = synth(root / "folder", images=7, size=(64, 96))
    return folder, write_shards(folder, root / "tars", per_shard=3)


def _ids(samples: object) -> list[str]:
    return [s["image_id"] for s in samples]


def test_shards_give_the_folder_samples(data: tuple[Path, list[Path]]) -> None:
    folder, shards = data
    assert len(shards) == 3
    stream = SA1BShards(shards, shuffle=False, image_size=(32, 48), masks_per_image=4)
    samples = list(stream)
    assert _ids(samples) == [f"sa_{i}" for i in range(1, 8)]
    reference = SA1BFolder(folder, image_size=(32, 48), masks_per_image=4)
    for i, sample in enumerate(samples):
        assert_same_sample(sample, reference[i])


def test_urls_globs_and_folders(data: tuple[Path, list[Path]]) -> None:
    _, shards = data
    folder = shards[0].parent
    assert expand_shards(folder) == [str(s) for s in shards]
    assert expand_shards(str(folder / "sa_*.tar")) == [str(s) for s in shards]
    assert expand_shards(str(folder / "sa_{000000..000001}.tar")) == [str(s) for s in shards[:2]]
    assert detect_kind(folder) == "shards" and detect_kind(str(folder / "*.tar")) == "shards"
    with pytest.raises(FileNotFoundError):
        SA1BShards(str(folder / "nothing_*.tar"))


def test_shuffle_is_seeded_and_changes_per_epoch(data: tuple[Path, list[Path]]) -> None:
    _, shards = data
    stream = SA1BShards(shards, shuffle_buffer=4, seed=3, image_size=(32, 48))
    first, second = _ids(stream), _ids(stream)
    assert sorted(first) == sorted(second) == sorted(f"sa_{i}" for i in range(1, 8))
    again = SA1BShards(shards, shuffle_buffer=4, seed=3, image_size=(32, 48))
    assert _ids(again) == first
    stream.set_epoch(0)
    assert _ids(stream) == first
    orders = {tuple(_ids(stream)) for _ in range(4)}
    assert len(orders) > 1


@pytest.mark.parametrize("shards_used", [3, 1])
def test_workers_each_read_a_disjoint_part(data: tuple[Path, list[Path]], shards_used: int) -> None:
    _, shards = data
    stream = SA1BShards(shards[:shards_used], shuffle=False, image_size=(32, 48))
    loader = DataLoader(stream, batch_size=2, num_workers=2, collate_fn=collate)
    ids = [i for batch in loader for i in batch["image_id"]]
    expected = 7 if shards_used == 3 else 3
    assert len(ids) == expected and len(set(ids)) == expected


def test_ranks_each_read_a_disjoint_part(
    data: tuple[Path, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, shards = data
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        seen.append(_ids(SA1BShards(shards, shuffle=False, image_size=(32, 48))))
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(f"sa_{i}" for i in range(1, 8))


@pytest.mark.parametrize(("samples_per_epoch", "workers", "shuffle"), [(10, 0, False), (4, 0, True), (10, 2, True)])
def test_samples_per_epoch_gives_every_rank_the_same_share(
    data: tuple[Path, list[Path]], monkeypatch: pytest.MonkeyPatch, samples_per_epoch: int, workers: int,
    shuffle: bool,
) -> None:
    _, shards = data  # 3 + 3 + 1 images; unshuffled, rank 0 reads 3 + 1 of them and rank 1 reads 3 (one pass)
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        stream = SA1BShards(shards, image_size=(32, 48), samples_per_epoch=samples_per_epoch, shuffle=shuffle)
        loader = DataLoader(stream, batch_size=1, num_workers=workers, collate_fn=collate)
        seen.append([i for batch in loader for i in batch["image_id"]])
    assert [len(ids) for ids in seen] == [samples_per_epoch // 2] * 2
    assert not set(seen[0]) & set(seen[1])  # a rank goes round its own part again, never another's
    if not shuffle:  # 5 samples a rank, more than its shards hold: every image of them, some twice
        assert sorted(set(seen[0])) == ["sa_1", "sa_2", "sa_3", "sa_7"]
        assert sorted(set(seen[1])) == ["sa_4", "sa_5", "sa_6"]


def test_samples_per_epoch_reader_without_data_is_an_error(data: tuple[Path, list[Path]]) -> None:
    _, shards = data
    stream = SA1BShards(shards[2:], image_size=(32, 48), samples_per_epoch=4, split="val", val_fraction=1e-9)
    with pytest.raises(ValueError, match="has no samples"):
        list(stream)
    with pytest.raises(ValueError, match="samples_per_epoch"):
        SA1BShards(shards, samples_per_epoch=0)


def test_bad_records_are_skipped_or_raise(data: tuple[Path, list[Path]], tmp_path: Path) -> None:
    folder, _ = data
    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w") as tar:
        tar.add(folder / "sa_1.jpg", arcname="sa_1.jpg")
        tar.add(folder / "sa_1.json", arcname="sa_1.json")
        tar.add(folder / "sa_2.jpg", arcname="sa_2.jpg")
        info = tarfile.TarInfo("sa_3.json")
        payload = b'{"image": {"width": 96'
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
        tar.add(folder / "sa_3.jpg", arcname="sa_3.jpg")
    samples = list(SA1BShards(path, shuffle=False, image_size=(32, 48)))
    assert not isinstance(samples[0], BadSample)
    assert (
        isinstance(samples[1], BadSample)
        and "sa_2.json" in samples[1].path
        and "missing" in samples[1].reason
    )
    assert isinstance(samples[2], BadSample) and "not valid JSON" in samples[2].reason
    with pytest.raises(DataError, match="sa_2.json: missing from the shard"):
        list(SA1BShards(path, shuffle=False, strict=True))


def test_get_loaders_on_shards(data: tuple[Path, list[Path]]) -> None:
    _, shards = data
    train, val = get_loaders(shards[0].parent, image_size=(32, 48), num_workers=0, val_fraction=0.3)
    train_ids = [i for b in train for i in b["image_id"]]
    val_ids = [i for b in val for i in b["image_id"]]
    assert sorted(train_ids + val_ids) == sorted(f"sa_{i}" for i in range(1, 8))
    assert train_ids and val_ids
    one_train, one_val = get_loaders(shards[0], image_size=(32, 48), num_workers=0, val_fraction=0.5)
    one = [i for b in one_train for i in b["image_id"]] + [i for b in one_val for i in b["image_id"]]
    assert sorted(one) == ["sa_1", "sa_2", "sa_3"]
