"""The SAM 2.1 family against Meta's own code: ``SAM2ImagePredictor`` and ``build_sam2`` on small random models."""

from __future__ import annotations

import fnmatch
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("sam2")

from sam2.build_sam import build_sam2  # noqa: E402
from sam2.sam2_image_predictor import SAM2ImagePredictor  # noqa: E402

from lora_sam.cli import main  # noqa: E402
from lora_sam.lora import inject_lora, lora_layers, merge_lora, resolve_layers, unmerge_lora  # noqa: E402
from lora_sam.lora.adapter import apply_adapter, save_adapter  # noqa: E402
from lora_sam.models import families  # noqa: E402
from lora_sam.models.sam2_1.model import MINI_OVERRIDES, MODEL_TYPES, Sam2Image  # noqa: E402

MINI = "sam2.1_mini"
MINI_PRESETS = families.family_of(MINI).layer_presets


def _mini(side: int, checkpoint: str | Path = "random", seed: int = 0) -> Sam2Image:
    torch.manual_seed(seed)
    model = families.build(MINI, checkpoint, (side, side))
    assert isinstance(model, Sam2Image)
    return model


def _image(h0: int, w0: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB image with a few shapes (not noise: masks of random weights still vary over it)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:h0, 0:w0]
    image = np.stack([(xs * 255 // w0), (ys * 255 // h0), np.full_like(xs, 90)], -1).astype(np.uint8)
    for _ in range(4):
        cy, cx, r = rng.integers(0, h0), rng.integers(0, w0), rng.integers(20, 80)
        image[(ys - cy) ** 2 + (xs - cx) ** 2 < r * r] = rng.integers(0, 255, 3)
    return image


def _resized_like_sam2(image: np.ndarray, side: int) -> torch.Tensor:
    """(1, 3, side, side) 0..255: the image resized to a square as ``SAM2Transforms`` does (bilinear, antialiased,
    the aspect ratio not kept)."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    return F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)


def _decode_at_1024(model: Sam2Image, image: np.ndarray, points: np.ndarray | None, box: np.ndarray | None,
                    multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """lora_sam's path: the image in the 1024 px square frame, prompts scaled per axis from the original
    image (x * 1024 / w0), less the half pixel SAM 2's prompt encoder adds."""
    h0, w0 = image.shape[:2]
    scale = torch.tensor([1024 / w0, 1024 / h0])
    with torch.no_grad():
        features = model.encode(_resized_like_sam2(image, 1024))
        kwargs = {}
        if points is not None:
            kwargs["points"] = (torch.from_numpy(points).float() * scale - 0.5)[None]
            kwargs["labels"] = torch.ones(1, len(points), dtype=torch.int)
        if box is not None:
            kwargs["boxes"] = (torch.from_numpy(box).float().view(2, 2) * scale - 0.5).view(1, 4)
        return model.decode(features, multimask=multimask, **kwargs)


@pytest.mark.parametrize("prompt", ["point", "two points", "box", "box and point"])
def test_points_and_boxes_give_sam2_image_predictors_masks_and_ious(prompt: str) -> None:
    model = _mini(1024)
    image = _image(300, 420)
    predictor = SAM2ImagePredictor(model.module)
    predictor.set_image(image)
    points = {"point": [[150.0, 100.0]], "two points": [[150.0, 100.0], [300.0, 220.0]], "box": None,
              "box and point": [[200.0, 150.0]]}[prompt]
    box = np.array([60.0, 40.0, 330.0, 260.0]) if "box" in prompt else None
    points = None if points is None else np.array(points)
    for multimask in (True, False):
        masks, ious, low = predictor.predict(point_coords=points, point_labels=None if points is None else
                                             np.ones(len(points)), box=box, multimask_output=multimask)
        ours, our_ious = _decode_at_1024(model, image, points, box, multimask)
        # float tolerance: the predictor's x / w0 * 1024 and our x * (1024 / w0) - 0.5 (+ 0.5 in the prompt
        # encoder) round differently, and a random network's logits move by about 1e-4 for 1e-5 px
        torch.testing.assert_close(ours[0].clamp(-32, 32), torch.from_numpy(low), rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(our_ious[0], torch.from_numpy(ious), rtol=1e-3, atol=1e-3)
        # the masks at the image's size: the low-resolution logits resized bilinearly, thresholded at 0
        full = F.interpolate(ours, size=image.shape[:2], mode="bilinear", align_corners=False)[0] > 0
        assert masks.any() and (full.numpy() != masks).mean() < 1e-3


def test_the_default_layers_are_the_image_paths_but_its_heads() -> None:
    """Brute force over the network's modules: the preset wraps every Linear / Conv2d / ConvTranspose2d of the
    trunk, neck, prompt encoder and mask decoder, the object-score head included (its loss trains it), except the
    IoU and hypernetwork heads; nothing of
    the memory modules (they never run on images). ``inject_lora`` takes the network's family's presets: with no
    layers named it wraps SAM 2.1's default, not SAM v1's (whose patterns name no module of SAM 2.1)."""
    model = _mini(224).module
    wrapped = set(inject_lora(model, 2, 2.0))
    assert wrapped == set(inject_lora(_mini(224).module, 2, 2.0, resolve_layers("default", MINI_PRESETS)))
    layers = {name for name, m in _mini(224).module.named_modules()
              if type(m) in (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)}
    heads = ("iou_prediction_head", "output_hypernetworks_mlps")
    expected = {n for n in layers if n.split(".")[0] in ("image_encoder", "sam_prompt_encoder", "sam_mask_decoder")
                and not any(h in n for h in heads)}
    assert wrapped == expected
    keep = set(inject_lora(_mini(224).module, 2, 2.0, "keep_object_score"))  # the head left as it is
    assert keep == {n for n in expected if "pred_obj_score_head" not in n} and len(wrapped - keep) == 3
    kinds = {type(lora_layers(model)[n].base) for n in wrapped}
    assert kinds == {nn.Linear, nn.Conv2d, nn.ConvTranspose2d}
    assert any(fnmatch.fnmatch(n, "sam_mask_decoder.conv_s*") for n in wrapped)
    qkv = set(inject_lora(_mini(224).module, 2, 2.0, "qkv"))  # a preset by name: the family's too
    assert qkv and qkv == {n for n in layers if n.startswith("image_encoder.") and n.endswith(".qkv")}


def test_lora_merge_then_unmerge_is_exact() -> None:
    model = _mini(224)
    base = {k: v.clone() for k, v in model.module.state_dict().items()}
    inject_lora(model.module, 4, 4.0, resolve_layers("default", families.family_of(MINI).layer_presets))
    with torch.no_grad():
        for layer in lora_layers(model.module).values():
            layer.lora_B.normal_(std=0.05)
    x = _resized_like_sam2(_image(200, 260), 224)
    point = torch.tensor([[[100.0, 80.0]]])
    label = torch.ones(1, 1, dtype=torch.int)

    def run() -> torch.Tensor:
        with torch.no_grad():
            return model.decode(model.encode(x), points=point, labels=label, all_outputs=True)[0]

    with_lora = run()
    merge_lora(model.module)
    assert not lora_layers(model.module)
    merged_state = model.module.state_dict()
    assert set(merged_state) == set(base)  # merged: the original keys and no LoRA tensor
    assert any(not torch.equal(merged_state[k], base[k]) for k in base)
    torch.testing.assert_close(run(), with_lora, rtol=1e-4, atol=1e-4)
    unmerge_lora(model.module)
    restored = {k.replace(".base.", "."): v for k, v in model.module.state_dict().items() if "lora_" not in k}
    assert set(restored) == set(base)
    for key, weight in base.items():  # float32 weights: the update subtracted again, to float32 rounding
        torch.testing.assert_close(restored[key], weight, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(run(), with_lora, rtol=1e-5, atol=1e-5)


def test_merged_export_loads_strictly_in_build_sam2_and_gives_the_lora_models_masks(tmp_path: Path) -> None:
    base = tmp_path / "sam2.1_mini_random.pt"
    torch.save({"model": _mini(1024).module.state_dict()}, base)  # Meta's layout
    low_res = _mini(224, base)
    inject_lora(low_res.module, 4, 4.0, resolve_layers("default", families.family_of(MINI).layer_presets))
    with torch.no_grad():
        for layer in lora_layers(low_res.module).values():
            layer.lora_B.normal_(std=0.05)
    adapter = tmp_path / "adapter.safetensors"
    save_adapter(low_res.module, adapter, model_type=MINI, image_size=(224, 224))
    out = tmp_path / "merged.pt"
    assert main(["export", str(adapter), "--checkpoint", str(base), "--out", str(out)]) == 0

    saved, original = torch.load(out, weights_only=True), torch.load(base, weights_only=True)
    assert set(saved) == {"model"} and set(saved["model"]) == set(original["model"])  # every key, memory included
    meta = build_sam2(MODEL_TYPES[MINI], str(out), device="cpu", hydra_overrides_extra=list(MINI_OVERRIDES),
                      apply_postprocessing=False)  # Meta's loader: strict, raises on a missing or extra key
    predictor = SAM2ImagePredictor(meta)
    image = _image(240, 320, seed=1)
    predictor.set_image(image)
    point = np.array([[120.0, 90.0]])
    _, ious, low = predictor.predict(point_coords=point, point_labels=np.ones(1), multimask_output=True)

    lora_1024 = _mini(1024, base)  # the LoRA model itself, not merged
    apply_adapter(lora_1024.module, adapter)
    ours, our_ious = _decode_at_1024(lora_1024, image, point, None, True)
    torch.testing.assert_close(ours[0].clamp(-32, 32), torch.from_numpy(low), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(our_ious[0], torch.from_numpy(ious), rtol=1e-3, atol=1e-3)


def test_one_recipe_step_trains_every_lora_layer(synthetic_root: Path) -> None:
    from lora_sam import LoRASAM, get_loaders

    torch.manual_seed(0)
    module = LoRASAM(model_type=MINI, checkpoint="random")
    assert module.promptable.image_size == (224, 224)  # the family's default square frame
    train, _ = get_loaders(synthetic_root, batch_size=2, image_size=(224, 224), frame="square", val_fraction=0.0,
                           num_workers=0)
    batch = next(iter(train))
    assert (batch["input_size"] == 224).all()  # the square frame: no padding
    before = {name: layer.lora_B.detach().clone() for name, layer in lora_layers(module.sam).items()}
    optimizer = module.configure_optimizers()["optimizer"]
    loss = module.training_step(batch, 0)
    loss.backward()
    optimizer.step()
    unchanged = [name for name, layer in lora_layers(module.sam).items() if torch.equal(layer.lora_B, before[name])]
    assert not unchanged and len(before) == len(module.lora_layers) > 60


def test_padded_batches_are_refused_with_the_fix() -> None:
    model = _mini(224)
    with pytest.raises(ValueError, match="frame='square'"):
        model.encode(torch.zeros(1, 3, 224, 224), torch.tensor([[150, 224]]))


@pytest.mark.parametrize("size", [(160, 256), (100, 100), 200])
def test_sam2_sizes_are_squares_of_multiples_of_32(size: object) -> None:
    with pytest.raises(ValueError, match="square frame"):
        families.build(MINI, "random", size)  # type: ignore[arg-type]


def test_missing_sam2_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sam2.build_sam", None)  # import fails as if sam2 were not installed
    with pytest.raises(ImportError, match=r"lora_sam\[sam2\]"):
        families.build(MINI, "random", (224, 224))


def test_the_apps_session_answers_a_click_on_a_sam2_model_as_sam2_image_predictor(tmp_path: Path) -> None:
    from lora_sam.app.images import from_array
    from lora_sam.app.models import ModelBank
    from lora_sam.app.session import Session

    base = tmp_path / "sam2.1_mini_random.pt"
    torch.save({"model": _mini(1024, seed=3).module.state_dict()}, base)
    bank = ModelBank(model_type=MINI, checkpoint=str(base), device="cpu")
    assert bank.image_size == (224, 224) and bank.frame == "square"
    image = _image(300, 420, seed=2)
    session = Session(bank)
    session.load(from_array(image, bank.image_size, "picture", frame=bank.frame))
    assert session.image.input_size == (224, 224)  # the whole frame: SAM 2's geometry
    dh, dw = session.image.display_size
    px, py = int(dw * 0.4), int(dh * 0.3)
    session.click(px, py, "positive")
    low = session.outputs()["base"]
    assert low.masks.shape == (3, 224, 224) and low.masks.any()
    session.set_resolution("1024")
    deployed = session.outputs()["base"]

    meta = build_sam2(MODEL_TYPES[MINI], str(base), device="cpu", hydra_overrides_extra=list(MINI_OVERRIDES),
                      apply_postprocessing=False)
    predictor = SAM2ImagePredictor(meta)
    predictor.set_image(image)
    # the display pixel's centre in the original image; SAM2ImagePredictor takes pixel indices (its prompt
    # encoder adds half a pixel of its 1024 px frame), so the centre is given less that half pixel
    h0, w0 = image.shape[:2]
    centre = np.array([[(px + 0.5) * w0 / dw - 0.5 * w0 / 1024, (py + 0.5) * h0 / dh - 0.5 * h0 / 1024]])
    _, ious, logits = predictor.predict(point_coords=centre, point_labels=np.ones(1), multimask_output=True)
    torch.testing.assert_close(deployed.iou_pred.float(), torch.from_numpy(ious), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(deployed.low_res.float(), torch.from_numpy(logits), rtol=1e-3, atol=1e-3)


def test_the_readmes_sam2_code_runs(tmp_path: Path, synthetic_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The documentation's SAM 2.1 block (docs/families.md) as written, but for a small random model, the CPU and
    one step."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "families.md").read_text()
    code = page.split("## SAM 2.1", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    base = tmp_path / "mini.pt"
    torch.save({"model": _mini(1024).module.state_dict()}, base)
    for old, new in (('build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", "merged.pt", device="cpu",',
                      f'build_sam2({MODEL_TYPES[MINI]!r}, "merged.pt", device="cpu", '
                      f'hydra_overrides_extra={list(MINI_OVERRIDES)!r},'),
                     ('"sam2.1_hiera_tiny.pt"', repr(str(base))), ('"sam2.1_hiera_t"', repr(MINI)),
                     ('accelerator="gpu", max_epochs=30', 'accelerator="cpu", max_steps=1, limit_val_batches=1')):
        assert old in code
        code = code.replace(old, new)
    monkeypatch.setenv("LORA_SAM_DATA", str(synthetic_root))
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "docs/families.md (SAM 2.1)", "exec"), scope)
    assert scope["trainer"].global_step == 1 and (tmp_path / "merged.pt").is_file()
    assert isinstance(scope["predictor"], SAM2ImagePredictor)
    assert not scope["predictor"].model.sam_mask_decoder.dynamic_multimask_via_stability  # built as evaluated
