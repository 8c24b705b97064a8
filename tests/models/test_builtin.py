"""The built-in base: shipped in the official format, loaded by one name, described by its model card."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from lora_sam.models.checkpoints import BUILTIN_FILES, CARD_FILES
from lora_sam.models.sam_v1.model import build_sam, builtin_checkpoint, resolve_checkpoint
from sam_v1_reference import official_tiny


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
    with pytest.raises(ValueError, match="no built-in weights for vit_b"):
        build_sam("vit_b", "builtin")


@pytest.mark.parametrize("model_type", sorted(BUILTIN_FILES))
def test_model_card_matches_the_file(model_type: str) -> None:
    path, (card_json, card_md) = builtin_checkpoint(model_type), CARD_FILES[model_type]
    card = json.loads(path.with_name(card_json).read_text())
    assert card["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert card["bytes"] == path.stat().st_size
    state = torch.load(path, weights_only=True)
    state = state.get("model", state)  # SAM 2.1's format: {"model": state_dict}
    assert card["parameters"] == sum(v.numel() for v in state.values())
    text = path.with_name(card_md).read_text()
    for needed in (card["sha256"], card["synth_command"], "not Meta's SAM", f"{card['steps']:,}"):
        assert needed in text


def test_lorasam_says_it_starts_from_the_builtin_base(monkeypatch: pytest.MonkeyPatch) -> None:
    from lora_sam.training.module import LoRASAM

    said: list[str] = []
    monkeypatch.setattr("lora_sam.training.module.rank_zero_info", said.append)  # Lightning's info logger
    model = LoRASAM(4, 1, model_type="tiny", image_size=(64, 96))
    text = "\n".join(said)
    assert "built-in base" in text and str(builtin_checkpoint("tiny")) in text
    base = torch.load(builtin_checkpoint("tiny"), weights_only=True)
    assert torch.equal(model.sam.mask_decoder.iou_token.weight, base["mask_decoder.iou_token.weight"])
    said.clear()
    LoRASAM(4, 1, model_type="tiny", checkpoint="random", image_size=(64, 96))
    assert not any("built-in base" in s for s in said)


def test_adapter_trained_on_it_exports_a_merged_official_checkpoint(tmp_path: Path) -> None:
    from lora_sam.lora import inject_lora
    from lora_sam.lora.adapter import export_merged, save_adapter

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


def _point_mious(predictor: object, image: np.ndarray, masks: list[np.ndarray]) -> float:
    """Mean IoU of single-mask predictions for one point inside each mask (a pixel of it, midway in raster order)."""
    predictor.set_image(image)  # type: ignore[attr-defined]
    ious = []
    for mask in masks:
        ys, xs = np.nonzero(mask)
        point = np.array([[xs[len(xs) // 2], ys[len(ys) // 2]]], dtype=np.float32)
        pred = predictor.predict(point_coords=point, point_labels=np.array([1]),  # type: ignore[attr-defined]
                                 multimask_output=False)[0][0].astype(bool)
        ious.append((pred & mask).sum() / max((pred | mask).sum(), 1))
    return float(np.mean(ious))


def test_the_sam2_base_is_metas_format_and_segments_a_scene_it_never_saw(tmp_path: Path) -> None:
    pytest.importorskip("sam2")
    from PIL import Image
    from pycocotools import mask as mask_utils
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from lora_sam.data.rle import to_pycocotools
    from lora_sam.data.synth import make_synthetic
    from lora_sam.models.sam2_1.config import MINI_OVERRIDES, MODEL_TYPES

    path = builtin_checkpoint("sam2.1_mini")
    assert path.stat().st_size <= 25 * 1024 * 1024
    make_synthetic(tmp_path, 1, seed=4242, long_side=512)  # not among the base's training scenes (seed 100)
    record = json.loads(next(tmp_path.glob("sa_*.json")).read_text())
    image = np.asarray(Image.open(next(tmp_path.glob("sa_*.jpg"))).convert("RGB"))
    masks = sorted((mask_utils.decode(to_pycocotools(a["segmentation"])).astype(bool) for a in record["annotations"]),
                   key=lambda m: -int(m.sum()))[:8]

    def predictor(checkpoint: str | None) -> SAM2ImagePredictor:  # Meta's builder loads the file strictly
        return SAM2ImagePredictor(build_sam2(MODEL_TYPES["sam2.1_mini"], checkpoint, device="cpu",
                                             hydra_overrides_extra=list(MINI_OVERRIDES)))

    torch.manual_seed(0)
    base, random = _point_mious(predictor(str(path)), image, masks), _point_mious(predictor(None), image, masks)
    assert base > max(0.3, random + 0.2), (base, random)  # measured: 0.50 against 0.06 (scenes of 3 seeds alike)
