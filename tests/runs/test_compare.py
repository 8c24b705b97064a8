from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from lora_sam.cli import main
from lora_sam.data.synth import make_synthetic
from lora_sam.training.metrics import METRIC_KEYS

pytestmark = pytest.mark.slow  # the whole module: its runs are shared by module fixtures


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_synthetic(root, 6, image_size=(96, 128), seed=2)
    out = tmp_path_factory.mktemp("compare")
    rc = main(["compare", "--data", str(root), "--out", str(out), "--model-type", "tiny", "--checkpoint", "random",
               "--image-size", "64", "96",
               "--steps", "3", "--val-every", "2", "--val-fraction", "0.3", "--batch-size", "1",
               "--masks-per-image", "2", "--iterations", "2", "--eval-max-images", "1", "--eval-masks-per-image", "2",
               "--eval-max-clicks", "2", "--quiet"])
    assert rc == 0
    return out


def test_compare_writes_both_modes(compare_run: Path) -> None:
    result = json.loads((compare_run / "compare.json").read_text())
    lora, full = result["runs"]["lora"], result["runs"]["full"]
    assert result["base"]["generated"] and (compare_run / "base.pth").is_file()
    assert 0 < lora["trainable_params"] < full["trainable_params"] == full["total_params"]
    assert lora["total_params"] > full["total_params"]  # the base plus the LoRA tensors
    assert sum(p["trainable"] for p in lora["params_by_part"]) == lora["trainable_params"]
    assert 0 < lora["weights_bytes"] < full["weights_bytes"]
    assert lora["checkpoint_bytes"] < full["checkpoint_bytes"]
    for run, name in ((lora, "adapter.safetensors"), (full, "model.pth")):
        assert run["steps"] == 3 and len(run["step_times_s"]) == 3 and run["step_time_s"] > 0
        assert Path(run["weights_file"]).name == name and Path(run["weights_file"]).is_file()
        assert run["memory"]["peak_bytes"] > 0 and run["memory"]["growth_bytes"] is not None
        assert set(run["metrics"]) == set(METRIC_KEYS)
        rows = list(csv.DictReader(Path(run["metrics_csv"]).open()))
        assert any(r.get("train/loss_step") for r in rows) and any(r.get("val/loss") for r in rows)
    assert set(result["base"]["metrics"]) == set(METRIC_KEYS)
    eval_report = json.loads((compare_run / "eval.json").read_text())
    assert list(eval_report["models"]) == ["base", "lora:adapter", "full:model"]
    assert eval_report["models"]["base"]["metrics"] == result["base"]["metrics"]


def test_compare_markdown_has_costs_and_metrics(compare_run: Path) -> None:
    text = (compare_run / "compare.md").read_text()
    for needle in ("trainable parameters", "time per training step", "peak memory", "adapter.safetensors",
                   "model.pth", "Lightning checkpoint", "| base (step 0) |", "| lora |", "| full |"):
        assert needle in text
    assert (compare_run / "eval.md").is_file()
