from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from adapter_fixtures import relabel_adapter
from lora_sam.cli import main
from lora_sam.lora import inject_lora, lora_layers
from lora_sam.lora.adapter import export_merged, save_adapter
from lora_sam.models.sam_v1.model import build_sam
from lora_sam.training.metrics import METRIC_KEYS

SIZE = (64, 96)


def _adapter(tmp_path: Path, checkpoint: Path, **meta: Any) -> Path:
    sam = build_sam("tiny", checkpoint, SIZE)
    inject_lora(sam, 2, 2.0, targets="decoder")
    torch.manual_seed(1)
    for layer in lora_layers(sam).values():
        torch.nn.init.normal_(layer.lora_B, std=0.05)
    path = tmp_path / "adapter.safetensors"
    save_adapter(sam, path, targets="decoder", model_type="tiny", image_size=SIZE)
    return relabel_adapter(path, **meta)


@pytest.mark.slow
def test_eval_cli_writes_json_and_markdown(tmp_path: Path, synth_root: Path, tiny_checkpoint: Path) -> None:
    adapter = _adapter(tmp_path, tiny_checkpoint)
    full = build_sam("tiny", tiny_checkpoint, SIZE)
    with torch.no_grad():
        full.mask_decoder.iou_prediction_head.layers[-1].bias.add_(0.3)
    torch.save(full.state_dict(), tmp_path / "model.pth")
    out = tmp_path / "eval"
    rc = main(["eval", "--data", str(synth_root), "--split", "all", "--model-type", "tiny", "--checkpoint",
               str(tiny_checkpoint), "--image-size", *map(str, SIZE), "--adapter", str(adapter), "--full",
               str(tmp_path / "model.pth"), "--original", "--max-images", "1", "--masks-per-image", "3",
               "--max-clicks", "3", "--out", str(out), "--quiet"])
    assert rc == 0
    report = json.loads((out / "eval.json").read_text())
    names = ["base", "lora:adapter", "full:model", "lora:adapter@1024", "full:model@1024", "original-1024",
             "original-1024:full-res"]
    assert list(report["models"]) == names
    table = (out / "eval.md").read_text()
    for name in names:
        entry = report["models"][name]
        assert f"| {name} |" in table
        assert set(entry["metrics"]) == set(METRIC_KEYS)
        assert entry["prompt_count"] == 3 and entry["images"] == 1
        assert np.asarray(entry["prompts"]["click_ious"]).shape == (3, 3)
        assert np.asarray(entry["prompts"]["click_points"]).shape == (3, 3, 2)
    base, full_entry = report["models"]["base"], report["models"]["full:model"]
    assert base["prompts"]["click_ious"] == full_entry["prompts"]["click_ious"]  # only the IoU head changed
    assert base["metrics"]["iou_head_mae"] != full_entry["metrics"]["iou_head_mae"]
    assert report["models"]["original-1024"]["input"] == "training image upscaled"
    # The deployed row is what a user gets from `lora-sam export` and SamPredictor: evaluate the exported
    # merged checkpoint as a base at 1024 px, and its row equals the adapter's deployed row.
    merged = export_merged(adapter, tmp_path / "merged.pth", base_checkpoint=tiny_checkpoint, model_type="tiny")
    again = tmp_path / "eval_merged"
    assert main(["eval", "--data", str(synth_root), "--split", "all", "--model-type", "tiny", "--checkpoint",
                 str(merged), "--image-size", *map(str, SIZE), "--original", "--max-images", "1",
                 "--masks-per-image", "3", "--max-clicks", "3", "--out", str(again), "--quiet"]) == 0
    exported = json.loads((again / "eval.json").read_text())["models"]["original-1024"]
    deployed = report["models"]["lora:adapter@1024"]
    assert exported["prompts"]["click_ious"] == deployed["prompts"]["click_ious"]
    assert exported["prompts"]["box_iou_single"] == deployed["prompts"]["box_iou_single"]
    assert deployed["prompts"]["click_ious"] != report["models"]["original-1024"]["prompts"]["click_ious"]


def test_eval_cli_names_the_adapter_that_does_not_fit(tmp_path: Path, synth_root: Path, tiny_checkpoint: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    wrong = _adapter(tmp_path, tiny_checkpoint, model_type="vit_b")
    args = ["eval", "--data", str(synth_root), "--split", "all", "--model-type", "tiny", "--checkpoint",
            str(tiny_checkpoint), "--image-size", *map(str, SIZE), "--out", str(tmp_path / "out"), "--quiet"]
    assert main([*args, "--adapter", str(wrong)]) == 2
    assert str(wrong) in capsys.readouterr().err
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    assert main([*args, "--adapter", str(broken)]) == 2
    assert str(broken) in capsys.readouterr().err
