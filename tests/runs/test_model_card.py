"""Shipping a base: the card counts every run that made the weights."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from lora_sam.runs.model_card import ship
from lora_sam.runs.pretrain import PretrainConfig


def _run(folder: Path, steps: int, seconds: float, data: Path, tiny_checkpoint: Path, lr: float) -> Path:
    folder.mkdir(parents=True)
    (folder / "base.pth").write_bytes(tiny_checkpoint.read_bytes())
    config = {**PretrainConfig().flat(), "lr": lr, "steps": steps}  # the flat record of runs before the groups
    record = {"config": config, "steps": steps, "seconds": seconds, "data": str(data), "parameters": 123,
              "threads": 2, "cpu": "x86_64", "torch": torch.__version__, "schedule": [[0, steps]]}
    (folder / "pretrain.json").write_text(json.dumps(record))
    return folder


def test_a_second_run_from_the_first_lists_both_and_counts_all(tmp_path: Path, tiny_checkpoint: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        (data / f"sa_{i}.json").write_text("{}")
    first = ship(_run(tmp_path / "one", 100, 3600.0, data, tiny_checkpoint, 1e-3), None, synth_command="synth A",
                 pretrain_command="pretrain A", out_dir=tmp_path / "w1")
    assert "stages" not in first and first["steps"] == 100 and first["train_images"] == 3
    second = ship(_run(tmp_path / "two", 40, 1800.0, data, tiny_checkpoint, 5e-4), None, synth_command="synth B",
                  pretrain_command="pretrain B --init builtin", out_dir=tmp_path / "w2",
                  previous=tmp_path / "w1" / "model_card.json")
    assert [s["pretrain_command"] for s in second["stages"]] == ["pretrain A", "pretrain B --init builtin"]
    assert second["steps"] == 140 and second["seconds"] == 5400.0 and second["hours"] == 1.5
    assert second["train_images"] == 6 and second["recipe"]["lr"] == 5e-4
    text = (tmp_path / "w2" / "MODEL_CARD.md").read_text()
    assert "Run 1 of 2" in text and "Run 2 of 2" in text and "140 AdamW steps in 1.50 h in all" in text
    weights = tmp_path / "w2" / second["name"]
    assert second["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_a_distilled_start_is_said_and_its_time_counted_once(tmp_path: Path, tiny_checkpoint: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    distilled = tmp_path / "distill.json"
    distilled.write_text(json.dumps({"steps": 800, "seconds": 1800.0, "first_relative_mse": 1.6,
                                     "last_relative_mse": 0.05, "config": {"teacher_type": "tiny"}, "sha256": "ab"}))
    card = ship(_run(tmp_path / "run", 100, 3600.0, data, tiny_checkpoint, 5e-4), None, synth_command="synth",
                pretrain_command="pretrain --init distilled.pt", out_dir=tmp_path / "w",
                distilled=(distilled, "lora-sam distill d"))
    assert card["seconds"] == 5400.0 and card["hours"] == 1.5 and card["stages"][0]["hours"] == 1.0
    text = (tmp_path / "w" / "MODEL_CARD.md").read_text()
    assert "from its own `tiny` base" in text and "pretrained from random weights" not in text
    assert "`lora-sam distill d`" in text and "800 steps (0.50 h)" in text and "1.617" not in text
    assert "100 steps in 1.00 h" in text and "100 AdamW steps (and 800 distillation steps) in 1.50 h in all" in text
