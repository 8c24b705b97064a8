from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor, sam_model_registry

from lora_sam.models.sam_v1.model import build_sam, decode, encode, upscale
from sam_v1_reference import official_tiny, ours_at_1024


@pytest.mark.parametrize("prompt", ["point", "points", "box"])
def test_1024_matches_official_predictor(tiny_checkpoint: Path, prompt: str) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(300, 420, 3), dtype=np.uint8)
    official = official_tiny(tiny_checkpoint)
    predictor = SamPredictor(official)
    predictor.set_image(image)
    ours = build_sam("tiny", tiny_checkpoint, image_size=(1024, 1024))

    coords = np.array([[200.0, 150.0], [50.0, 40.0]])
    labels = np.array([1, 0])
    box = np.array([30.0, 20.0, 380.0, 260.0])
    if prompt == "point":
        kw, mine = dict(point_coords=coords[:1], point_labels=labels[:1]), {}
        mine = dict(points=torch.as_tensor(predictor.transform.apply_coords(coords[:1], image.shape[:2]))[None].float(),
                    labels=torch.as_tensor(labels[:1])[None])
    elif prompt == "points":
        kw = dict(point_coords=coords, point_labels=labels)
        mine = dict(points=torch.as_tensor(predictor.transform.apply_coords(coords, image.shape[:2]))[None].float(),
                    labels=torch.as_tensor(labels)[None])
    else:
        kw = dict(box=box)
        mine = dict(boxes=torch.as_tensor(predictor.transform.apply_boxes(box, image.shape[:2])).float())
    masks, iou, low = predictor.predict(**kw, multimask_output=True)
    low_ours, iou_ours, masks_ours = ours_at_1024(ours, predictor, image, **mine)

    torch.testing.assert_close(low_ours[0], torch.as_tensor(low), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(iou_ours[0], torch.as_tensor(iou), rtol=1e-4, atol=1e-4)
    agree = (masks_ours[0].numpy() == masks).mean()
    assert agree > 0.9999


def test_low_resolution_shapes_and_position_embedding(tiny_checkpoint: Path) -> None:
    sam = build_sam("tiny", tiny_checkpoint, image_size=(160, 256))
    assert sam.image_encoder.pos_embed.shape[1:3] == (10, 16)
    assert sam.prompt_encoder.image_embedding_size == (10, 16)
    assert sam.prompt_encoder.mask_input_size == (40, 64)
    image = torch.rand(2, 3, 160, 256) * 255
    emb = encode(sam, image, torch.tensor([[160, 200], [120, 256]]))
    assert emb.shape == (2, 64, 10, 16)
    k = 5
    low, iou = decode(sam, emb[:1], points=torch.rand(k, 2, 2) * 150, labels=torch.ones(k, 2, dtype=torch.long))
    assert low.shape == (k, 3, 40, 64) and iou.shape == (k, 3)
    low2, _ = decode(sam, emb[:1], boxes=torch.tensor([[10.0, 10, 100, 90]] * k), mask_input=low[:, :1])
    assert low2.shape == (k, 3, 40, 64)
    assert upscale(low, (160, 256)).shape == (k, 3, 160, 256)
    # Interpolating the 64x64 grid to itself is the identity: the 1024 model keeps the checkpoint's table.
    full = build_sam("tiny", tiny_checkpoint, image_size=(1024, 1024))
    state = torch.load(tiny_checkpoint, weights_only=True)
    assert torch.equal(full.image_encoder.pos_embed, state["image_encoder.pos_embed"])


@pytest.mark.parametrize("size", [(64, 96), (96, 128), (1024, 1024)])
def test_checkpoint_saved_at_a_training_resolution_loads_at_any_size(tiny_checkpoint: Path, tmp_path: Path,
                                                                     size: tuple[int, int]) -> None:
    """A fully fine-tuned model.pth keeps its 4x6 position table; built at another size, the table is
    resized bicubically (as from the official 64x64 grid) and every other tensor loads unchanged."""
    low = build_sam("tiny", tiny_checkpoint, image_size=(64, 96))
    with torch.no_grad():
        low.image_encoder.pos_embed.normal_()
    path = tmp_path / "model.pth"
    torch.save(low.state_dict(), path)
    sam = build_sam("tiny", path, image_size=size)
    table = low.image_encoder.pos_embed.detach().permute(0, 3, 1, 2)
    want = torch.nn.functional.interpolate(table, size=(size[0] // 16, size[1] // 16), mode="bicubic",
                                           align_corners=False).permute(0, 2, 3, 1)
    torch.testing.assert_close(sam.image_encoder.pos_embed.detach(), want)
    if size == (64, 96):
        assert torch.equal(sam.image_encoder.pos_embed, low.image_encoder.pos_embed)
    others = {k: v for k, v in low.state_dict().items() if k != "image_encoder.pos_embed"}
    assert all(torch.equal(sam.state_dict()[k], v) for k, v in others.items())


@pytest.mark.slow
def test_vit_b_builds_like_the_official_registry(tmp_path: Path) -> None:
    torch.manual_seed(1)
    official = sam_model_registry["vit_b"]()
    path = tmp_path / "sam_vit_b_random.pth"
    torch.save(official.state_dict(), path)
    ours = build_sam("vit_b", path, image_size=(1024, 1024))
    theirs = ours.state_dict()
    for k, v in official.state_dict().items():
        assert torch.equal(theirs[k], v), k
    with pytest.raises(ValueError, match="holds a vit_b model, not vit_l"):
        build_sam("vit_l", path)


def test_bad_checkpoints_and_sizes(tmp_path: Path, tiny_checkpoint: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_sam("tiny", tmp_path / "nope.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    with pytest.raises(ValueError, match="truncated"):
        build_sam("tiny", truncated)
    with pytest.raises(ValueError, match="multiples of 16"):
        build_sam("tiny", image_size=(150, 256))
    with pytest.raises(ValueError, match="unknown model_type"):
        build_sam("vit_x")
    wrong = torch.load(tiny_checkpoint, weights_only=True)
    wrong["mask_decoder.iou_token.weight"] = torch.zeros(1, 7)
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="shape mismatch: mask_decoder.iou_token.weight"):
        build_sam("tiny", tmp_path / "wrong.pth")


def test_missing_default_checkpoint_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LORA_SAM_CHECKPOINT", raising=False)
    monkeypatch.setenv("LORA_SAM_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="LORA_SAM_CHECKPOINT"):
        build_sam("vit_b")
    with pytest.warns(UserWarning, match="RANDOM"):
        build_sam("vit_b", "random", image_size=(160, 256))


def test_prompt_encodings_are_float32_under_autocast() -> None:
    """Point and box positions and the dense positional encoding stay float32 under bf16 autocast (in
    bf16 a point moves by about half a training pixel), equal to the encodings without autocast."""
    from lora_sam.models.sam_v1.model import encode_prompts

    torch.manual_seed(0)
    sam = build_sam("tiny", "random", (64, 96))
    points = torch.rand(5, 2, 2) * torch.tensor([95.0, 63.0])
    labels = torch.tensor([[1, 0]] * 5)
    boxes = torch.tensor([[3.0, 4.0, 80.5, 60.25]] * 5)
    mask_input = torch.randn(5, 1, 16, 24).bfloat16()  # logits fed back from a decoder under autocast
    plain = encode_prompts(sam, points, labels, boxes, mask_input.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = encode_prompts(sam, points, labels, boxes, mask_input)
    for a, b in zip(under, plain):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("prompts", ["points", "boxes", "points+boxes", "points+mask", "mask", "none"])
def test_prompt_encoder_without_boolean_writes_equals_the_official_one(prompts: str) -> None:
    """``encode_prompts`` embeds points with ``torch.where`` (one graph for ``torch.compile``): bit for bit the
    official ``PromptEncoder.forward``, padding point, not-a-point and negative labels included."""
    from lora_sam.models.sam_v1.model import encode_prompts

    torch.manual_seed(1)
    sam = build_sam("tiny", "random", (64, 96))
    points = torch.rand(6, 3, 2) * torch.tensor([95.0, 63.0])
    labels = torch.tensor([[1, 0, -1], [0, 1, 1], [-1, -1, 1], [1, 1, 1], [0, 0, 0], [1, -1, 0]])
    boxes = torch.rand(6, 4) * 60
    mask_input = torch.randn(6, 1, 16, 24)
    given = {"points": (points, labels) if "points" in prompts else None, "boxes": boxes if "boxes" in prompts else None,
             "masks": mask_input if "mask" in prompts else None}
    sparse, dense, dense_pe = encode_prompts(sam, *(given["points"] or (None, None)), given["boxes"], given["masks"])
    official_sparse, official_dense = sam.prompt_encoder(**given)
    assert torch.equal(sparse, official_sparse) and torch.equal(dense, official_dense)
    assert torch.equal(dense_pe, sam.prompt_encoder.get_dense_pe())
