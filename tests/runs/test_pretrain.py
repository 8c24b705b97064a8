"""``lora-sam pretrain``: exact resumption, the official format of its output, one table for every size."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lora_sam.data.synth import make_synthetic
from lora_sam.models.sam_v1.model import ResolutionSwitch, build_sam, encode
from lora_sam.runs.pretrain import PretrainConfig, add_arguments, pretrain
from lora_sam.settings import from_args, to_dict

_DEFAULT = PretrainConfig()
CONFIG = PretrainConfig(steps=3, sizes=((64, 96), (64, 64)), size_weights=(0.5, 0.5), batch_size=1,
                        recipe=replace(_DEFAULT.recipe, masks_per_image=2),
                        optim=replace(_DEFAULT.optim, warmup_steps=1), log_every=1)


def _lr(config: PretrainConfig, lr: float) -> PretrainConfig:
    return replace(config, optim=replace(config.optim, lr=lr))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pretrain_data")
    make_synthetic(root, 3, seed=5, image_size=(96, 128))
    return root


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path: Path, data: Path) -> None:
    straight = pretrain(tmp_path / "a", data, CONFIG, progress=False)
    stopped = pretrain(tmp_path / "b", data, CONFIG, stop_after_s=0.0, progress=False)
    assert stopped == {"step": 1, "finished": False}
    assert (tmp_path / "b" / "checkpoints" / "last.ckpt").is_file()
    first_rows = (tmp_path / "b" / "metrics.csv").read_text()
    resumed = pretrain(tmp_path / "b", data, CONFIG, progress=False)
    assert straight["steps"] == resumed["steps"] == 3
    assert (tmp_path / "b" / "metrics_to_step1.csv").read_text() == first_rows  # Lightning deletes metrics.csv
    a = torch.load(tmp_path / "a" / "base.pth", weights_only=True)
    b = torch.load(tmp_path / "b" / "base.pth", weights_only=True)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    first = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    start = build_sam("tiny", "random", (1024, 1024)).state_dict()  # training moved the weights
    assert any(not torch.equal(first[f"sam.{k}"], start[k]) for k in start if f"sam.{k}" in first)


def test_output_is_an_official_checkpoint_with_the_64x64_table(tmp_path: Path, data: Path) -> None:
    from segment_anything import SamPredictor

    record = pretrain(tmp_path, data, replace(CONFIG, steps=1), progress=False)
    state = torch.load(record["checkpoint"], weights_only=True)
    assert state["image_encoder.pos_embed"].shape == (1, 64, 64, 160)
    assert not any("parametrizations" in k for k in state)
    sam = build_sam("tiny", record["checkpoint"], (1024, 1024))  # strict load, as sam_model_registry does
    predictor = SamPredictor(sam)
    predictor.set_image((torch.rand(120, 160, 3) * 255).to(torch.uint8).numpy())
    masks, _, _ = predictor.predict(point_coords=torch.tensor([[80.0, 60.0]]).numpy(),
                                    point_labels=torch.tensor([1]).numpy())
    assert masks.shape == (3, 120, 160)
    assert record["sha256"] and record["bytes"] == Path(record["checkpoint"]).stat().st_size


def test_switch_runs_the_1024_model_as_build_sam_does_at_that_size(tiny_checkpoint: Path) -> None:
    sam = build_sam("tiny", tiny_checkpoint, (1024, 1024))
    switch = ResolutionSwitch(sam)
    image = torch.rand(1, 3, 160, 256) * 255
    for size in ((160, 256), (64, 64)):
        switch.set(size)
        reference = build_sam("tiny", tiny_checkpoint, size)  # the table resized once, at build time
        x = image[..., : size[0], : size[1]]
        torch.testing.assert_close(encode(sam, x), encode(reference, x), atol=1e-4, rtol=1e-4)
        assert sam.prompt_encoder.image_embedding_size == reference.prompt_encoder.image_embedding_size
        assert tuple(sam.prompt_encoder.mask_input_size) == tuple(reference.prompt_encoder.mask_input_size)
    assert switch.official_state_dict()["image_encoder.pos_embed"].shape == (1, 64, 64, 160)


def test_resuming_with_other_settings_is_refused(tmp_path: Path, data: Path) -> None:
    pretrain(tmp_path, data, CONFIG, stop_after_s=0.0, progress=False)
    with pytest.raises(ValueError, match="lr"):
        pretrain(tmp_path, data, _lr(CONFIG, 1e-2), progress=False)


def test_export_writes_the_last_checkpoint_of_a_run_ended_early(tmp_path: Path, data: Path) -> None:
    from lora_sam.runs.pretrain import export_last

    with pytest.raises(FileNotFoundError, match="last.ckpt"):
        export_last(tmp_path, data)
    pretrain(tmp_path, data, CONFIG, stop_after_s=0.0, progress=False)
    record = export_last(tmp_path, data)
    assert record["steps"] == 1 and record["finished"] is False
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    base = torch.load(tmp_path / "base.pth", weights_only=True)
    assert torch.equal(base["image_encoder.pos_embed"],
                       saved["sam.image_encoder.parametrizations.pos_embed.original"])
    assert torch.equal(base["mask_decoder.iou_token.weight"], saved["sam.mask_decoder.iou_token.weight"])


def test_resuming_with_a_new_total_of_steps_ends_the_schedule_there(tmp_path: Path, data: Path) -> None:
    pretrain(tmp_path, data, CONFIG, stop_after_s=0.0, progress=False)
    record = pretrain(tmp_path, data, replace(CONFIG, steps=2), progress=False)
    assert record["steps"] == 2 and record["schedule"] == [[0, 3], [1, 2]]
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    # warm-up of 1 step, then cosine from 1.0 to final_lr_fraction over the one step left: the end
    assert state["lr_schedulers"][0]["_last_lr"][0] == pytest.approx(CONFIG.optim.lr * CONFIG.optim.final_lr_fraction)
    with pytest.raises(ValueError, match="at least"):
        pretrain(tmp_path, data, replace(CONFIG, steps=1), progress=False)


def test_init_starts_from_the_given_checkpoint(tmp_path: Path, data: Path, tiny_checkpoint: Path) -> None:
    official = torch.load(tiny_checkpoint, weights_only=True)
    frozen = pretrain(tmp_path / "frozen", data, replace(_lr(CONFIG, 0.0), steps=1, init=str(tiny_checkpoint)),
                      progress=False)  # lr 0: the step changes nothing, so the output is the start
    out = torch.load(frozen["checkpoint"], weights_only=True)
    assert out.keys() == official.keys() and all(torch.equal(out[k], official[k]) for k in official)
    moved = pretrain(tmp_path / "moved", data, replace(CONFIG, steps=1, init=str(tiny_checkpoint)), progress=False)
    assert frozen["config"]["init"] == str(tiny_checkpoint)
    out = torch.load(moved["checkpoint"], weights_only=True)
    changed = [k for k in official if not torch.equal(out[k], official[k])]
    assert changed and max(float((out[k] - official[k]).abs().max()) for k in changed) < 0.05  # one small step


def test_a_run_is_the_recipe_step_by_hand_at_each_drawn_size(tmp_path: Path, data: Path) -> None:
    """Three steps through LoRASAM and the Trainer equal a plain loop written here: the same random weights,
    batches and sizes by step, recipe.interactive_step, AdamW with warm-up and cosine, gradient clipping."""
    from lora_sam.models.sam_v1.model import SamV1
    from lora_sam.runs.pretrain import StepBatches
    from lora_sam.training.recipe import interactive_step, prompt_generator

    config = CONFIG  # 3 steps, 1 of warm-up: the cosine is at 0 then half way at the last step
    record = pretrain(tmp_path, data, config, progress=False, device="cpu")
    torch.manual_seed(config.seed)
    sam = build_sam("tiny", "random", (1024, 1024)).train()
    switch = ResolutionSwitch(sam)
    optimizer = torch.optim.AdamW(sam.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    batches = StepBatches(data, config)
    final = config.optim.final_lr_fraction
    for step, factor in enumerate((1.0, 1.0, final + (1 - final) * 0.5)):
        for group in optimizer.param_groups:
            group["lr"] = config.optim.lr * factor
        switch.set(batches.size_at(step))
        result = interactive_step(SamV1(sam), batches.at(step), prompt_generator(config.seed, step), config.recipe)
        optimizer.zero_grad()
        result.mean("total").backward()
        torch.nn.utils.clip_grad_norm_(sam.parameters(), config.grad_clip)
        optimizer.step()
    expected = switch.official_state_dict()
    got = torch.load(record["checkpoint"], weights_only=True)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, atol=1e-6, rtol=1e-5)


def test_options_come_from_the_config_fields_and_old_records_read_back(tmp_path: Path) -> None:
    from lora_sam.cli import main

    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["out", "--data", "d", "--sizes", "64x96", "64x64", "--size-weights", "1", "3",
                              "--lr", "0.01", "--iterations", "2", "--steps", "7"])
    config = from_args(PretrainConfig, args)
    assert config.sizes == ((64, 96), (64, 64)) and config.size_weights == (1.0, 3.0) and config.steps == 7
    assert config.optim.lr == 0.01 and config.recipe.iterations == 2
    assert config.recipe.masks_per_image == PretrainConfig().recipe.masks_per_image
    with pytest.raises(SystemExit):
        parser.parse_args(["out", "--data", "d", "--sizes", "64-96"])
    # pretrain.json written before the groups: the recipe and optimiser fields flat
    old = PretrainConfig.from_dict({"model_type": "tiny", "steps": 5, "sizes": [[64, 96]], "size_weights": [1.0],
                                    "lr": 0.002, "masks_per_image": 3, "final_lr_fraction": 0.1})
    assert old.optim.lr == 0.002 and old.optim.final_lr_fraction == 0.1 and old.recipe.masks_per_image == 3
    assert old.optim.weight_decay == PretrainConfig().optim.weight_decay
    assert PretrainConfig.from_dict(to_dict(config)) == config
