"""The built-in base: shipped in the official format, loaded by one name, described by its model card."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from lora_sam.model import build_sam, builtin_checkpoint, resolve_checkpoint
from test_model import official_tiny


def test_builtin_is_an_official_checkpoint_that_samPredictor_runs() -> None:
    path = builtin_checkpoint("tiny")
    assert path.stat().st_size <= 25 * 1024 * 1024
    official = official_tiny(path)  # the official classes, strict load_state_dict
    predictor = SamPredictor(official)
    image = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    predictor.set_image(image)
    masks, scores, _ = predictor.predict(point_coords=np.array([[160.0, 120.0]]), point_labels=np.array([1]))
    assert masks.shape == (3, 240, 320) and np.isfinite(scores).all()
    ours = build_sam("tiny", "builtin", (1024, 1024)).state_dict()
    assert all(torch.equal(ours[k], v) for k, v in official.state_dict().items())


def test_one_name_loads_it_and_tiny_defaults_to_it() -> None:
    assert resolve_checkpoint("tiny", None) == builtin_checkpoint("tiny") == resolve_checkpoint("tiny", "builtin")
    a, b = build_sam("tiny", "builtin").state_dict(), build_sam("tiny").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    random = build_sam("tiny", "random").state_dict()
    assert not torch.equal(random["mask_decoder.iou_token.weight"], a["mask_decoder.iou_token.weight"])
    with pytest.raises(ValueError, match="only tiny"):
        build_sam("vit_b", "builtin")


def test_model_card_matches_the_file() -> None:
    path = builtin_checkpoint("tiny")
    card = json.loads(path.with_name("model_card.json").read_text())
    assert card["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert card["bytes"] == path.stat().st_size
    assert card["parameters"] == sum(v.numel() for v in torch.load(path, weights_only=True).values())
    text = path.with_name("MODEL_CARD.md").read_text()
    for needed in (card["sha256"], card["synth_command"], "not Meta's SAM", f"{card['steps']:,}"):
        assert needed in text


def test_lorasam_says_it_starts_from_the_builtin_base(monkeypatch: pytest.MonkeyPatch) -> None:
    from lora_sam.module import LoRASAM

    said: list[str] = []
    monkeypatch.setattr("lora_sam.module.rank_zero_info", said.append)  # Lightning's info logger
    model = LoRASAM(4, 1, model_type="tiny", image_size=(64, 96))
    text = "\n".join(said)
    assert "built-in base" in text and str(builtin_checkpoint("tiny")) in text
    base = torch.load(builtin_checkpoint("tiny"), weights_only=True)
    assert torch.equal(model.sam.mask_decoder.iou_token.weight, base["mask_decoder.iou_token.weight"])
    said.clear()
    LoRASAM(4, 1, model_type="tiny", checkpoint="random", image_size=(64, 96))
    assert not any("built-in base" in s for s in said)


def test_adapter_trained_on_it_exports_a_merged_official_checkpoint(tmp_path: Path) -> None:
    from lora_sam.adapter import export_merged, save_adapter
    from lora_sam.lora import inject_lora

    sam = build_sam("tiny", "builtin", (64, 96))
    inject_lora(sam, 4, 4)
    for name, p in sam.named_parameters():
        if name.endswith("lora_B"):
            p.data.normal_(0, 0.01)
    save_adapter(sam, tmp_path / "a.safetensors", model_type="tiny", image_size=(64, 96))
    export_merged(tmp_path / "a.safetensors", tmp_path / "merged.pth", base_checkpoint=builtin_checkpoint("tiny"))
    merged = official_tiny(tmp_path / "merged.pth")
    base = official_tiny(builtin_checkpoint("tiny"))
    assert not torch.equal(merged.image_encoder.blocks[0].attn.qkv.weight, base.image_encoder.blocks[0].attn.qkv.weight)
