from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor, sam_model_registry

from lora_sam.cli import main
from lora_sam.lora import inject_lora, lora_layers
from lora_sam.lora.adapter import save_adapter
from lora_sam.models.sam_v1.model import build_sam
from sam_v1_reference import ours_at_1024


@pytest.mark.slow
def test_merged_vit_b_export_runs_in_official_predictor(tmp_path: Path) -> None:
    """Adapter trained at 160x256 -> merged official checkpoint -> SamPredictor at 1024 px."""
    torch.manual_seed(0)
    base = tmp_path / "sam_vit_b_random.pth"
    torch.save(sam_model_registry["vit_b"]().state_dict(), base)

    low_res = build_sam("vit_b", base, image_size=(160, 256))
    inject_lora(low_res, 4, 4)
    with torch.no_grad():
        for layer in lora_layers(low_res).values():
            layer.lora_B.normal_(std=0.02)
    adapter = tmp_path / "adapter.safetensors"
    save_adapter(low_res, adapter, model_type="vit_b", image_size=(160, 256))
    out = tmp_path / "merged.pth"
    assert main(["export", str(adapter), "--checkpoint", str(base), "--out", str(out)]) == 0

    official = sam_model_registry["vit_b"](checkpoint=str(out))  # strict key check inside
    predictor = SamPredictor(official)
    image = np.random.default_rng(0).integers(0, 255, size=(240, 320, 3), dtype=np.uint8)
    predictor.set_image(image)
    point = np.array([[160.0, 120.0]])
    _, iou, low = predictor.predict(point_coords=point, point_labels=np.array([1]), multimask_output=True)

    # The LoRA model itself (not merged), at 1024 px with the adapter's tensors.
    lora_1024 = build_sam("vit_b", base, image_size=(1024, 1024))
    from lora_sam.lora.adapter import apply_adapter

    apply_adapter(lora_1024, adapter)
    coords = torch.as_tensor(predictor.transform.apply_coords(point, image.shape[:2])).float()[None]
    low_ours, iou_ours, _ = ours_at_1024(lora_1024, predictor, image, points=coords,
                                         labels=torch.ones(1, 1, dtype=torch.long))
    torch.testing.assert_close(low_ours[0], torch.as_tensor(low), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(iou_ours[0], torch.as_tensor(iou), rtol=1e-3, atol=1e-3)
    # The merge really changed the weights.
    plain = torch.load(base, weights_only=True)
    merged = torch.load(out, weights_only=True)
    assert set(plain) == set(merged)
    assert not torch.equal(plain["image_encoder.blocks.0.attn.qkv.weight"], merged["image_encoder.blocks.0.attn.qkv.weight"])
    assert torch.equal(plain["image_encoder.pos_embed"], merged["image_encoder.pos_embed"])


def test_export_refuses_other_model_type(tmp_path: Path, tiny_checkpoint: Path) -> None:
    sam = build_sam("tiny", tiny_checkpoint, image_size=(64, 64))
    inject_lora(sam, 2, 2)
    adapter = tmp_path / "a.safetensors"
    save_adapter(sam, adapter, model_type="tiny", image_size=(64, 64))
    from lora_sam.lora.adapter import export_merged

    with pytest.raises(ValueError, match="trained on tiny, not vit_b"):
        export_merged(adapter, tmp_path / "m.pth", tiny_checkpoint, model_type="vit_b")
    out = export_merged(adapter, tmp_path / "m.pth", tiny_checkpoint)
    assert set(torch.load(out, weights_only=True)) == set(torch.load(tiny_checkpoint, weights_only=True))


def test_an_adapter_file_written_before_the_layout_by_concept_still_loads(tmp_path: Path) -> None:
    """The files' format name is "lora_sam.adapter/1", as every adapter written so far records it (the module
    moved to lora_sam.lora.adapter; the format did not): a file made by hand in that format loads."""
    import json

    from safetensors.torch import save_file

    from lora_sam.lora.adapter import apply_adapter, read_adapter_info

    sam = build_sam("tiny", "random", (64, 96))
    names = inject_lora(sam, 2, 2.0, "qkv")
    tensors = {f"{n}.{p}": v.detach().clone() + 0.01 for n in names for p, v in
               lora_layers(sam)[n].named_parameters() if p in ("lora_A", "lora_B")}
    assert len(tensors) == 2 * len(names) > 0
    meta = {"format": "lora_sam.adapter/1", "rank": "2", "alpha": "2.0", "targets": json.dumps(["qkv"]),
            "layers": json.dumps(names), "model_type": json.dumps("tiny"), "image_size": json.dumps([64, 96]),
            "base_fingerprint": json.dumps(None)}
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata=meta)
    assert read_adapter_info(tmp_path / "old.safetensors").layers == names
    fresh = build_sam("tiny", "random", (64, 96))
    apply_adapter(fresh, tmp_path / "old.safetensors")
    for key, value in tensors.items():
        assert torch.equal(fresh.state_dict()[key], value)


def test_save_adapter_reads_model_type_family_and_frame_from_the_network(tmp_path: Path,
                                                                         tiny_checkpoint: Path) -> None:
    """``save_adapter(model.sam, path)`` with nothing else records what the network's family tells of it: its
    model type, family and training frame (the case of issue 32: a LoRASAM's network saved by hand, then
    exported without --model-type)."""
    from lora_sam.lora.adapter import export_merged, read_adapter_info
    from lora_sam.training.module import LoRASAM

    model = LoRASAM(2, 2.0, model_type="tiny", checkpoint=str(tiny_checkpoint), image_size=(64, 96), layers="qkv")
    path = tmp_path / "adapter.safetensors"
    save_adapter(model.sam, path)
    info = read_adapter_info(path)
    assert (info.model_type, info.family, info.image_size) == ("tiny", "sam_v1", [64, 96])
    assert main(["export", str(path), "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "m.pth")]) == 0
    with pytest.raises(ValueError, match="model_type='vit_b', but the network is a tiny"):
        save_adapter(model.sam, tmp_path / "lie.safetensors", model_type="vit_b")
    assert not (tmp_path / "lie.safetensors").exists()
    merged = torch.load(export_merged(path, tmp_path / "again.pth", tiny_checkpoint), weights_only=True)
    assert set(merged) == set(torch.load(tiny_checkpoint, weights_only=True))


def test_an_adapter_of_another_family_is_refused_naming_both(tmp_path: Path, tiny_checkpoint: Path) -> None:
    from adapter_fixtures import relabel_adapter
    from lora_sam.lora.adapter import apply_adapter

    sam = build_sam("tiny", tiny_checkpoint, image_size=(64, 64))
    inject_lora(sam, 2, 2)
    save_adapter(sam, tmp_path / "a.safetensors")
    path = relabel_adapter(tmp_path / "a.safetensors", family="sam2.1", model_type="sam2.1_mini")
    with pytest.raises(ValueError, match="family: adapter sam2.1, model sam_v1"):
        apply_adapter(build_sam("tiny", tiny_checkpoint, image_size=(64, 64)), path)
