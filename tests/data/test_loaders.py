"""Datasets, collate and get_loaders: the sample and batch formats of docs/contracts.md."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from data_fixtures import shared_data, synth, write_sa1b
from lora_sam.data.annotations import BadSample, DataError
from lora_sam.data.loaders import (
    CocoInstances,
    EpochSampler,
    LoaderOptions,
    SA1BFolder,
    SampleOptions,
    collate,
    detect_kind,
    get_loaders,
    resolve_root,
    split_indices,
)
from lora_sam.data.rle import decode_naive, resize_shape


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth(tmp_path_factory.mktemp("synth") / "data", images=6, size=(96, 128))


def _check_sample(sample: dict, image_size: tuple[int, int], masks_per_image: int) -> None:
    height, width = image_size
    assert set(sample) == {"image", "masks", "targets", "input_size", "original_size", "image_id"}
    image, masks, targets = sample["image"], sample["masks"], sample["targets"]
    assert image.dtype == torch.float32 and image.shape == (3, height, width)
    assert 0 <= image.min() and image.max() <= 255 and image.max() > 1
    assert masks.dtype == torch.bool and masks.ndim == 3 and masks.shape[1:] == (height, width)
    assert targets.dtype == torch.int64 and len(targets) == min(len(masks), masks_per_image)
    assert len(set(targets.tolist())) == len(targets) and all(0 <= t < len(masks) for t in targets.tolist())
    h, w = sample["input_size"].tolist()
    assert sample["input_size"].dtype == sample["original_size"].dtype == torch.int64
    assert (h, w) == resize_shape(tuple(sample["original_size"].tolist()), image_size, "pad")
    assert not image[:, h:].any() and not image[:, :, w:].any()
    assert not masks[:, h:].any() and not masks[:, :, w:].any()
    assert isinstance(sample["image_id"], str)


def test_sa1b_folder_samples_follow_the_contract(synth_root: Path) -> None:
    dataset = SA1BFolder(synth_root, image_size=(64, 96), masks_per_image=5)
    assert len(dataset) == 6 and dataset.image_id(0) == "sa_1"
    for i in range(len(dataset)):
        sample = dataset[i]
        _check_sample(sample, (64, 96), 5)
        assert sample["original_size"].tolist() == [96, 128]
        assert sample["image_id"] == f"sa_{i + 1}"


def test_fast_and_naive_paths_give_identical_masks(synth_root: Path) -> None:
    fast = SA1BFolder(synth_root, image_size=(48, 64), min_mask_pixels=1)
    naive = SA1BFolder(synth_root, image_size=(48, 64), min_mask_pixels=1, fast=False)
    for i in range(len(fast)):
        a, b = fast[i], naive[i]
        assert torch.equal(a["masks"], b["masks"]) and torch.equal(a["targets"], b["targets"])
        assert (a["image"] - b["image"]).abs().mean() < 8


def test_masks_match_the_json_and_the_image_is_resized(synth_root: Path) -> None:
    dataset = SA1BFolder(synth_root, image_size=(64, 96), min_mask_pixels=0, max_mask_fraction=1.0)
    sample = dataset[1]
    doc = json.loads((synth_root / "sa_2.json").read_text())
    h, w = sample["input_size"].tolist()
    expected = np.stack([decode_naive(a["segmentation"], (h, w)) for a in doc["annotations"]])
    assert np.array_equal(sample["masks"][:, :h, :w].numpy(), expected)
    reference = np.asarray(Image.open(synth_root / "sa_2.jpg").convert("RGB").resize((w, h), Image.BILINEAR))
    got = sample["image"][:, :h, :w].permute(1, 2, 0).numpy()
    assert np.abs(got - reference.astype(np.float32)).mean() < 12


def test_targets_are_reproducible_per_epoch(synth_root: Path) -> None:
    dataset = SA1BFolder(synth_root, masks_per_image=3, seed=7)
    first = dataset[0]["targets"]
    assert torch.equal(first, SA1BFolder(synth_root, masks_per_image=3, seed=7)[0]["targets"])
    assert torch.equal(dataset[(0, 0)]["targets"], first)
    draws = {tuple(dataset[(0, epoch)]["targets"].tolist()) for epoch in range(8)}
    assert len(draws) > 1
    dataset.set_epoch(5)
    assert torch.equal(dataset[0]["targets"], dataset[(0, 5)]["targets"])
    other_seed = {
        tuple(SA1BFolder(synth_root, masks_per_image=3, seed=s)[0]["targets"].tolist()) for s in range(8)
    }
    assert len(other_seed) > 1


def test_masks_too_large_or_too_small_are_dropped(tmp_path: Path) -> None:
    image = np.random.default_rng(0).integers(0, 255, (100, 200, 3), dtype=np.uint8)
    whole = np.ones((100, 200), bool)
    most = np.zeros((100, 200), bool)
    most[:, :185] = True
    tiny = np.zeros((100, 200), bool)
    tiny[50:52, 50:53] = True
    normal = np.zeros((100, 200), bool)
    normal[10:60, 20:90] = True
    write_sa1b(tmp_path, 1, image, [whole, most, tiny, normal])
    sample = SA1BFolder(tmp_path, image_size=(32, 64))[0]
    assert len(sample["masks"]) == 1
    assert torch.equal(sample["masks"][0, :32, :64], torch.from_numpy(decode_naive(_rle(normal), (32, 64))))
    loose = SA1BFolder(tmp_path, image_size=(32, 64), max_mask_fraction=0.95, min_mask_pixels=0)[0]
    assert len(loose["masks"]) == 3
    only_whole = tmp_path / "whole"
    write_sa1b(only_whole, 2, image, [whole])
    bad = SA1BFolder(only_whole)[0]
    assert isinstance(bad, BadSample) and "no usable mask" in bad.reason


def _rle(mask: np.ndarray) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(mask.shape), "counts": encoded["counts"].decode()}


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P"])
def test_non_rgb_images_are_converted(tmp_path: Path, mode: str) -> None:
    image = np.random.default_rng(1).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    mask = np.zeros((64, 96), bool)
    mask[5:40, 10:60] = True
    write_sa1b(tmp_path, 3, image, [mask], mode="RGB" if mode in ("RGBA", "P") else mode)
    if mode in ("RGBA", "P"):
        Image.fromarray(image).convert(mode).save(tmp_path / "sa_3.jpg", format="PNG")
    dataset = SA1BFolder(tmp_path, image_size=(32, 48))
    sample = dataset[0]
    assert sample["image"].shape == (3, 32, 48)
    if mode == "L":
        assert torch.equal(sample["image"][0], sample["image"][1])
    _, problems = dataset.read(0)
    assert any(p.field == "mode" and mode in p.message and p.severity == "warning" for p in problems)


def test_bad_samples_and_strict(tmp_path: Path) -> None:
    image = np.zeros((40, 60, 3), dtype=np.uint8)
    mask = np.zeros((40, 60), bool)
    mask[5:30, 5:30] = True
    path = write_sa1b(tmp_path, 12, image, [mask, mask])
    doc = json.loads(path.read_text())
    doc["annotations"][1]["segmentation"]["size"] = [60, 40]
    path.write_text(json.dumps(doc))
    bad = SA1BFolder(tmp_path)[0]
    assert isinstance(bad, BadSample) and bad.path == str(path)
    assert "annotation 1: RLE size (60, 40) does not match image 60x40" in bad.reason
    with pytest.raises(
        DataError, match=r"sa_12\.json: annotation 1: RLE size \(60, 40\) does not match image 60x40"
    ):
        SA1BFolder(tmp_path, strict=True)[0]
    assert not [p for p in tmp_path.iterdir() if p.name not in ("sa_12.json", "sa_12.jpg")]


def test_collate_stacks_and_skips(synth_root: Path) -> None:
    dataset = SA1BFolder(synth_root, masks_per_image=4)
    samples = [dataset[0], BadSample("/x/sa_9.json", "annotations: empty"), dataset[1]]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = collate(samples)
        collate(samples)
    assert [str(w.message) for w in caught] == [
        "skipping bad sample /x/sa_9.json: annotations: empty ('lora-sam check-data' lists every problem)"
    ]
    assert set(batch) == {"image", "masks", "targets", "input_size", "original_size", "image_id", "skipped"}
    assert batch["image"].shape == (2, 3, 160, 256)
    assert batch["input_size"].shape == batch["original_size"].shape == (2, 2)
    assert [len(m) for m in batch["masks"]] == [len(dataset[0]["masks"]), len(dataset[1]["masks"])]
    assert all(len(t) == 4 for t in batch["targets"])
    assert batch["image_id"] == ["sa_1", "sa_2"] and batch["skipped"] == ["/x/sa_9.json: annotations: empty"]
    with pytest.warns(UserWarning, match="skipping bad sample a: b"):
        empty = collate([BadSample("a", "b")])
    assert empty["image"].shape[0] == 0 and empty["masks"] == [] and empty["skipped"] == ["a: b"]


def test_real_sa1b_sample(tmp_path: Path) -> None:
    root = shared_data() / "sa1b"
    dataset = SA1BFolder(root)
    sample = dataset[0]
    _check_sample(sample, (160, 256), 16)
    assert sample["original_size"].tolist() == [2060, 1500] and sample["input_size"].tolist() == [160, 117]
    assert 30 < len(sample["masks"]) <= 65
    naive = SA1BFolder(root, fast=False)[0]
    assert torch.equal(sample["masks"], naive["masks"])
    _, problems = dataset.read(0)
    assert problems == []


def test_real_coco_samples() -> None:
    root = shared_data() / "coco"
    for split, size in [("train", [375, 500]), ("val", [500, 375])]:
        dataset = CocoInstances(root / split / "annotations.json", image_size=(96, 128))
        assert len(dataset) == 1
        sample = dataset[0]
        _check_sample(sample, (96, 128), 16)
        assert sample["original_size"].tolist() == size and len(sample["masks"]) == 2
        doc = json.loads((root / split / "annotations.json").read_text())
        h, w = sample["input_size"].tolist()
        for mask, ann in zip(sample["masks"], doc["annotations"]):
            full = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], *size))
            assert np.array_equal(mask[:h, :w].numpy(), decode_naive(full, (h, w)))


def test_coco_polygons_and_rle(tmp_path: Path) -> None:
    image = np.random.default_rng(2).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.jpg")
    Image.fromarray(image[:40]).save(tmp_path / "b.jpg")
    block = np.zeros((50, 70), bool)
    block[10:30, 5:50] = True
    crowd = np.zeros((50, 70), bool)
    crowd[::3, 40:] = True
    uncompressed = {"size": [50, 70], "counts": _runs(crowd)}
    doc = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 70, "height": 50},
            {"id": 2, "file_name": "b.jpg", "width": 70, "height": 40},
            {"id": 3, "file_name": "c.jpg", "width": 70, "height": 40},
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "segmentation": [[5, 5, 60, 5, 60, 45, 5, 45], [0, 0, 4, 0, 4, 4]],
                "iscrowd": 0,
            },
            {"id": 2, "image_id": 1, "segmentation": _rle(block), "iscrowd": 0},
            {"id": 3, "image_id": 1, "segmentation": uncompressed, "iscrowd": 1},
            {"id": 4, "image_id": 2, "segmentation": [[1, 1, 30, 1, 30, 30]], "iscrowd": 0},
        ],
        "categories": [],
    }
    (tmp_path / "instances_x.json").write_text(json.dumps(doc))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset = CocoInstances(tmp_path / "instances_x.json", image_size=(48, 64), min_mask_pixels=1)
    assert len(dataset) == 2 and [dataset.image_id(i) for i in range(2)] == ["1", "2"]
    sample = dataset[0]
    h, w = sample["input_size"].tolist()
    polygon = mask_utils.merge(mask_utils.frPyObjects(doc["annotations"][0]["segmentation"], 50, 70))
    expected = [
        decode_naive(polygon, (h, w)),
        decode_naive(_rle(block), (h, w)),
        decode_naive(_rle(crowd), (h, w)),
    ]
    assert np.array_equal(sample["masks"][:, :h, :w].numpy(), np.stack(expected))
    assert dataset[1]["original_size"].tolist() == [40, 70]
    assert any("no annotations" in p.message for p in dataset.file_problems)
    assert detect_kind(tmp_path) == "coco" and detect_kind(tmp_path / "instances_x.json") == "coco"


def _runs(mask: np.ndarray) -> list[int]:
    flat = mask.T.reshape(-1).astype(np.int8)
    edges = np.concatenate(([0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]))
    runs = np.diff(edges).tolist()
    return [0, *runs] if flat[0] else runs


def test_split_is_stable_and_never_empty() -> None:
    ids = [f"sa_{i}" for i in range(200)]
    train, val = split_indices(ids, 0.1)
    assert sorted(train + val) == list(range(200)) and 8 <= len(val) <= 35
    more_train, more_val = split_indices(ids + [f"sa_{i}" for i in range(200, 260)], 0.1)
    assert [i for i in more_val if i < 200] == val
    for n in range(2, 6):
        train, val = split_indices(ids[:n], 0.1)
        assert len(val) >= 1 and len(train) >= 1
    assert split_indices(["a"], 0.5) == ([0], [])
    assert split_indices(ids[:5], 0.0) == ([0, 1, 2, 3, 4], [])


def test_epoch_sampler() -> None:
    sampler = EpochSampler(10, shuffle=True, seed=3)
    first, second = list(sampler), list(sampler)
    assert sorted(i for i, _ in first) == list(range(10)) and {e for _, e in first} == {0}
    assert {e for _, e in second} == {1} and first != second
    sampler.set_epoch(0)
    assert list(sampler) == first
    assert list(EpochSampler(4, shuffle=False)) == [(0, 0), (1, 0), (2, 0), (3, 0)]


def test_root_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synth_root: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LORA_SAM_DATA", raising=False)
    with pytest.raises(FileNotFoundError) as info:
        resolve_root()
    message = str(info.value)
    assert "LORA_SAM_DATA" in message and "'data'" in message and "root" in message
    assert "lora-sam synth data --images 64" in message
    monkeypatch.setenv("LORA_SAM_DATA", str(synth_root))
    assert resolve_root() == str(synth_root)
    (tmp_path / "data").mkdir()
    assert resolve_root("data") == "data"
    monkeypatch.delenv("LORA_SAM_DATA")
    assert resolve_root() == "data"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        resolve_root(tmp_path / "nowhere")


def test_get_loaders_train_and_val(synth_root: Path) -> None:
    train, val = get_loaders(synth_root, image_size=(64, 96), batch_size=2, masks_per_image=3, num_workers=0)
    train_ids = [i for batch in train for i in batch["image_id"]]
    val_batches = list(val)
    val_ids = [i for batch in val_batches for i in batch["image_id"]]
    assert sorted(train_ids + val_ids) == sorted(f"sa_{i}" for i in range(1, 7)) and val_ids
    batch = val_batches[0]
    assert batch["image"].shape[1:] == (3, 64, 96) and batch["skipped"] == []
    epoch_targets = [[t.tolist() for b in train for t in b["targets"]] for _ in range(3)]
    assert epoch_targets[0] != epoch_targets[1] or epoch_targets[1] != epoch_targets[2]
    again = [t.tolist() for b in val for t in b["targets"]]
    assert again == [t.tolist() for b in val_batches for t in b["targets"]]


def test_get_loaders_with_persistent_workers(synth_root: Path) -> None:
    train, _ = get_loaders(synth_root, batch_size=2, num_workers=1, val_fraction=0.0, seed=1)
    assert train.persistent_workers
    plain, _ = get_loaders(synth_root, batch_size=2, num_workers=0, val_fraction=0.0, seed=1)
    for _ in range(2):
        got = [(b["image_id"], [t.tolist() for t in b["targets"]]) for b in train]
        expected = [(b["image_id"], [t.tolist() for t in b["targets"]]) for b in plain]
        assert got == expected


def test_lightning_fit_with_get_loaders(synth_root: Path, tmp_path: Path) -> None:
    pl = pytest.importorskip("pytorch_lightning")

    class Probe(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.seen: list[list[int]] = []

        def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
            self.seen.append([len(t) for t in batch["targets"]])
            return (self.weight - batch["image"].mean() / 255).pow(2).sum()

        def validation_step(self, batch: dict, batch_idx: int) -> None:
            self.log("val", batch["image"].mean(), batch_size=len(batch["image_id"]))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    model = Probe()
    train_loader, val_loader = get_loaders(synth_root, image_size=(32, 48), num_workers=0)
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, train_loader, val_loader)
    assert len(model.seen) == 2 * len(train_loader)
    assert train_loader.sampler.epoch == 2


def test_pin_memory_follows_cuda(synthetic_root) -> None:
    """Page-locked batches when the batches go to a GPU: get_loaders by default when CUDA is available,
    SAMDataModule when its trainer runs on CUDA; never on a CPU-only run."""
    from types import SimpleNamespace

    from pytorch_lightning.accelerators import CPUAccelerator

    from lora_sam.runs.fit import SAMDataModule

    train, _ = get_loaders(synthetic_root, image_size=(64, 96), num_workers=0)
    assert train.pin_memory == torch.cuda.is_available()
    assert get_loaders(synthetic_root, image_size=(64, 96), num_workers=0, pin_memory=True)[0].pin_memory
    module = SAMDataModule(str(synthetic_root), LoaderOptions(num_workers=0), SampleOptions(image_size=(64, 96)))
    module.trainer = SimpleNamespace(accelerator=CPUAccelerator())
    assert not module.train_dataloader().pin_memory


def test_batch_to_moves_every_tensor_of_a_batch(synthetic_root) -> None:
    """What the report and pretrain do before a step off the CPU (the meta device stands in for a GPU)."""
    from lora_sam.data.samples import batch_to

    train, _ = get_loaders(synthetic_root, image_size=(64, 96), num_workers=0, batch_size=2)
    batch = next(iter(train))
    moved = batch_to(batch, "meta")
    tensors = [moved["image"], moved["input_size"], *moved["masks"], *moved["targets"]]
    assert all(t.device.type == "meta" for t in tensors)
    assert moved["image_id"] == batch["image_id"] and batch["image"].device.type == "cpu"
