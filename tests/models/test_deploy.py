"""lora_sam.models.sam_v1.deploy and its commands: ONNX files against the PyTorch model, segment-all's SA-1B output."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from segment_anything import SamAutomaticMaskGenerator, SamPredictor

from lora_sam.cli import main
from lora_sam.data.sa1b_write import masks_to_coco, overlay_masks
from lora_sam.lora import inject_lora, lora_layers
from lora_sam.lora.adapter import save_adapter
from lora_sam.models.sam_v1.deploy import decoder_feed, encoder_input, export_onnx
from lora_sam.models.sam_v1.model import build_sam

ort = pytest.importorskip("onnxruntime")

# Largest absolute differences allowed between onnxruntime (CPU) and PyTorch for the float32 files.
# Measured on the 2-core x86 CPU of the development machine with the random tiny SAM below: encoder
# embedding 6.5e-6 (values up to 4.1), upscaled mask logits 2.5e-6, low-resolution logits 1.6e-7,
# IoU predictions 6e-8; the bounds leave room for other CPUs' kernels and thread counts.
EMBEDDING_ATOL = 1e-4
LOGITS_ATOL = 5e-5
IOU_ATOL = 1e-5


@pytest.fixture(scope="module")
def tiny_1024(tiny_checkpoint: Path) -> torch.nn.Module:
    return build_sam("tiny", tiny_checkpoint, image_size=(1024, 1024))


@pytest.fixture(scope="module")
def onnx_files(tiny_1024: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return export_onnx(tiny_1024, tmp_path_factory.mktemp("onnx"), quantize=True)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """Not square, so a wrong crop of SAM's padding would show (4:3, unlike the tracing example)."""
    picture = np.random.default_rng(0).integers(0, 255, size=(120, 160, 3), dtype=np.uint8)
    picture[30:90, 40:120] = (220, 40, 40)
    return picture


@pytest.fixture(scope="module")
def predictor(tiny_1024: torch.nn.Module, image: np.ndarray) -> SamPredictor:
    predictor = SamPredictor(tiny_1024)
    predictor.set_image(image)
    return predictor


def _session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


CLICKS_1 = (np.array([[80.0, 60.0]]), np.array([1]))
CLICKS_3 = (np.array([[80.0, 60.0], [10.0, 15.0], [150.0, 110.0]]), np.array([1, 0, 1]))


def test_onnx_encoder_matches_pytorch(onnx_files, tiny_1024, predictor, image) -> None:
    embedding = _session(onnx_files["encoder"]).run(None, {"image": encoder_input(tiny_1024, image)})[0]
    reference = predictor.features.numpy()
    assert embedding.shape == reference.shape == (1, 64, 64, 64)
    np.testing.assert_allclose(embedding, reference, rtol=0, atol=EMBEDDING_ATOL)


def test_onnx_decoder_matches_predictor_for_one_and_three_clicks(onnx_files, predictor, image) -> None:
    """1 click: the best of SAM's 3 multimask outputs; 3 clicks + mask prompt: the single-mask output."""
    decoder = _session(onnx_files["decoder"])
    features, hw = predictor.features.numpy(), image.shape[:2]
    masks, ious, low = predictor.predict(*CLICKS_1, multimask_output=True, return_logits=True)
    best = int(ious.argmax())
    out_masks, out_iou, out_low = decoder.run(None, decoder_feed(features, *CLICKS_1, hw))
    assert out_masks.shape == (1, 1, *hw)
    np.testing.assert_allclose(out_masks[0, 0], masks[best], rtol=0, atol=LOGITS_ATOL)
    np.testing.assert_allclose(out_low[0, 0], low[best], rtol=0, atol=LOGITS_ATOL)
    np.testing.assert_allclose(out_iou[0, 0], ious[best], rtol=0, atol=IOU_ATOL)

    prompt = low[best][None]
    masks3, ious3, low3 = predictor.predict(
        *CLICKS_3, mask_input=prompt, multimask_output=False, return_logits=True
    )
    out3 = decoder.run(None, decoder_feed(features, *CLICKS_3, hw, mask_input=prompt[None]))
    np.testing.assert_allclose(out3[0][0, 0], masks3[0], rtol=0, atol=LOGITS_ATOL)
    np.testing.assert_allclose(out3[1][0, 0], ious3[0], rtol=0, atol=IOU_ATOL)
    np.testing.assert_allclose(out3[2][0, 0], low3[0], rtol=0, atol=LOGITS_ATOL)
    assert np.array_equal(out3[0][0, 0] > 0, masks3[0] > 0)


@pytest.mark.parametrize("hw", [(300, 100), (1500, 2250)])
def test_onnx_decoder_crops_the_padding_of_any_image_size(onnx_files, tiny_1024, hw) -> None:
    """The crop of SAM's padding follows orig_im_size (the traced official model keeps the example's)."""
    embedding = np.random.default_rng(1).standard_normal((1, 64, 64, 64)).astype(np.float32)
    feed = decoder_feed(embedding, np.array([[50.0, 40.0]]), np.array([1]), hw)
    masks, _, low = _session(onnx_files["decoder"]).run(None, feed)
    from segment_anything.utils.transforms import ResizeLongestSide

    resized = ResizeLongestSide.get_preprocess_shape(*hw, 1024)
    reference = tiny_1024.postprocess_masks(torch.as_tensor(low), resized, hw).numpy()
    assert masks.shape == (1, 1, *hw)
    np.testing.assert_allclose(masks, reference, rtol=0, atol=LOGITS_ATOL)


def test_int8_files_are_smaller_load_and_roughly_agree(onnx_files, tiny_1024, predictor, image) -> None:
    for name in ("encoder", "decoder"):
        assert onnx_files[f"{name}_int8"].stat().st_size < 0.8 * onnx_files[name].stat().st_size
    x = encoder_input(tiny_1024, image)
    embedding = _session(onnx_files["encoder_int8"]).run(None, {"image": x})[0]
    reference = predictor.features.numpy()
    assert embedding.shape == reference.shape and np.isfinite(embedding).all()
    # measured relative error 0.18 (random weights, x86 without VNNI): quantized, not broken (zeros give 1.0)
    assert np.linalg.norm(embedding - reference) / np.linalg.norm(reference) < 0.5
    feed = decoder_feed(reference, *CLICKS_3, image.shape[:2])
    masks8, iou8, _ = _session(onnx_files["decoder_int8"]).run(None, feed)
    masks, iou, _ = _session(onnx_files["decoder"]).run(None, feed)
    assert masks8.shape == masks.shape and np.isfinite(masks8).all()
    a, b = masks8 > 0, masks > 0
    assert (a & b).sum() / max(1, (a | b).sum()) > 0.7  # measured 0.96
    assert abs(float(iou8[0, 0]) - float(iou[0, 0])) < 0.25  # measured 0.017


def test_export_refuses_low_resolution_and_unmerged_models(tiny_checkpoint, tmp_path) -> None:
    with pytest.raises(ValueError, match="1024x1024 px SAM: merge"):
        export_onnx(build_sam("tiny", tiny_checkpoint, image_size=(64, 64)), tmp_path)
    lora = build_sam("tiny", tiny_checkpoint, image_size=(1024, 1024))
    inject_lora(lora, 2, 2)
    with pytest.raises(ValueError, match="merge_lora"):
        export_onnx(lora, tmp_path)
    assert not list(tmp_path.iterdir())


def test_missing_onnxruntime_names_the_extra(tiny_1024, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(ImportError, match=r"lora_sam\[onnx\]"):
        export_onnx(tiny_1024, tmp_path)


def _adapter(base: Path, path: Path) -> Path:
    low_res = build_sam("tiny", base, image_size=(64, 64))
    inject_lora(low_res, 2, 2)
    with torch.no_grad():
        for layer in lora_layers(low_res).values():
            layer.lora_B.normal_(std=0.02, generator=torch.Generator().manual_seed(0))
    save_adapter(low_res, path, model_type="tiny", image_size=(64, 64))
    return path


def test_export_command_writes_onnx_of_the_merged_model(tiny_checkpoint, tmp_path, image, capsys) -> None:
    adapter = _adapter(tiny_checkpoint, tmp_path / "a.safetensors")
    merged, onnx_dir = tmp_path / "merged.pth", tmp_path / "onnx"
    assert main(["export", str(adapter), "--out", str(merged), "--quantize"]) == 2
    assert "--quantize needs --onnx" in capsys.readouterr().err and not merged.exists()
    assert (
        main(
            [
                "export",
                str(adapter),
                "--checkpoint",
                str(tiny_checkpoint),
                "--out",
                str(merged),
                "--onnx",
                str(onnx_dir),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in onnx_dir.iterdir()) == ["decoder.onnx", "encoder.onnx"]
    predictor = SamPredictor(build_sam("tiny", merged, image_size=(1024, 1024)))
    predictor.set_image(image)
    masks, ious, _ = predictor.predict(*CLICKS_3, multimask_output=False, return_logits=True)
    feed = decoder_feed(predictor.features.numpy(), *CLICKS_3, image.shape[:2])
    out_masks, out_iou, _ = _session(onnx_dir / "decoder.onnx").run(None, feed)
    np.testing.assert_allclose(out_masks[0, 0], masks[0], rtol=0, atol=LOGITS_ATOL)
    np.testing.assert_allclose(out_iou[0, 0], ious[0], rtol=0, atol=IOU_ATOL)


def test_masks_to_coco_round_trips_every_output_mode() -> None:
    masks = np.zeros((3, 7, 9), dtype=bool)
    masks[0, 1:4, 2:8] = True
    masks[1, 0, 0] = True
    masks[2, :, 8] = True
    records = [
        {
            "segmentation": m,
            "bbox": [0, 0, 1, 1],
            "area": int(m.sum()),
            "predicted_iou": 0.9,
            "stability_score": 0.95,
            "point_coords": [[1.5, 2.0]],
            "crop_box": [0, 0, 9, 7],
        }
        for m in masks
    ]
    annotations = masks_to_coco(records, (7, 9))
    assert json.loads(json.dumps(annotations)) == annotations  # plain JSON types only
    for ann, mask in zip(annotations, masks):
        assert ann["segmentation"]["size"] == [7, 9] and isinstance(ann["segmentation"]["counts"], str)
        assert np.array_equal(mask_utils.decode(ann["segmentation"]).astype(bool), mask)
    as_rle = [
        {**r, "segmentation": mask_utils.encode(np.asfortranarray(r["segmentation"].astype(np.uint8)))}
        for r in records
    ]
    assert masks_to_coco(as_rle, (7, 9)) == annotations
    with pytest.raises(ValueError, match="does not fit the image size"):
        masks_to_coco(records, (9, 7))


def test_overlay_tints_masks_and_outlines_them() -> None:
    image = np.full((8, 10, 3), 100, dtype=np.uint8)
    mask = np.zeros((8, 10), dtype=bool)
    mask[2:7, 3:9] = True
    out = overlay_masks(image, [mask], alpha=0.5)
    assert np.array_equal(out[~mask], image[~mask])
    interior, edge = out[4, 5], out[2, 5]
    assert not np.array_equal(interior, image[4, 5]) and not np.array_equal(interior, edge)
    assert np.allclose(interior, (image[4, 5] + edge.astype(float)) / 2, atol=1)  # edge pixels are the colour


def _images(folder: Path) -> list[Path]:
    folder.mkdir()
    rng = np.random.default_rng(3)
    paths = []
    for i, (h, w) in enumerate([(90, 120), (100, 70)]):
        picture = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
        picture[h // 4 : h // 2, w // 4 : 3 * w // 4] = (200, 30, 30)
        paths.append(folder / f"img{i}.png")
        Image.fromarray(picture).save(paths[-1])
    return paths


@pytest.fixture
def pretrained_tiny(tmp_path: Path) -> Path:
    """The shipped tiny base at 1024 px, saved as an official checkpoint: it finds shapes, random weights do not."""
    path = tmp_path / "tiny.pth"
    torch.save(build_sam("tiny", "builtin", image_size=(1024, 1024)).state_dict(), path)
    return path


def test_segment_all_writes_coco_rle_that_decodes_to_the_generator_masks(
    pretrained_tiny, tmp_path, monkeypatch
):
    images, out = _images(tmp_path / "images"), tmp_path / "out"
    generated: dict[tuple[int, ...], list[dict]] = {}
    original = SamAutomaticMaskGenerator.generate

    def recording(self, image):
        generated[image.shape] = records = original(self, image)
        return records

    monkeypatch.setattr(SamAutomaticMaskGenerator, "generate", recording)
    assert (
        main(
            [
                "segment-all",
                str(images[0].parent),
                "--checkpoint",
                str(pretrained_tiny),
                "--model-type",
                "tiny",
                "--out",
                str(out),
                "--points-per-side",
                "4",
                "--pred-iou-thresh",
                "0",
                "--stability-score-thresh",
                "0",
            ]
        )
        == 0
    )
    from lora_sam.data.annotations import parse_sa1b

    for path in images:
        picture = np.asarray(Image.open(path).convert("RGB"))
        doc = json.loads((out / f"{path.stem}.json").read_text())
        assert doc["image"] == {
            "image_id": path.stem,
            "file_name": path.name,
            "height": picture.shape[0],
            "width": picture.shape[1],
        }
        records = generated[picture.shape]
        assert len(doc["annotations"]) == len(records) > 3
        for ann, record in zip(doc["annotations"], records):
            decoded = mask_utils.decode(ann["segmentation"]).astype(bool)
            assert np.array_equal(decoded, record["segmentation"])
            assert ann["area"] == int(decoded.sum())
            assert (
                ann["bbox"] == pytest.approx(record["bbox"]) and ann["point_coords"] == record["point_coords"]
            )
        _, problems = parse_sa1b(doc, str(path))
        assert not [p for p in problems if p.severity != "warning"]
        overlay = np.asarray(Image.open(out / f"{path.stem}_masks.png"))
        assert overlay.shape == picture.shape and not np.array_equal(overlay, picture)


def _segment_all_error(args: list[str], capsys) -> str:
    assert main(["segment-all", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lora-sam segment-all: error:") and "Traceback" not in err
    return err


def test_segment_all_explains_bad_inputs(tiny_checkpoint, pretrained_tiny, tmp_path, capsys) -> None:
    out = ["--out", str(tmp_path / "out"), "--model-type", "tiny"]
    missing = tmp_path / "nothere.jpg"
    assert str(missing) in _segment_all_error(
        [str(missing), "--checkpoint", str(tiny_checkpoint), *out], capsys
    )
    broken = tmp_path / "broken.png"
    broken.write_text("not a picture")
    err = _segment_all_error([str(broken), "--checkpoint", str(tiny_checkpoint), *out], capsys)
    assert str(broken) in err and "not a readable image" in err
    good = _images(tmp_path / "images")[0]
    adapter = _adapter(tiny_checkpoint, tmp_path / "other_base.safetensors")  # trained on another base
    err = _segment_all_error(
        [str(good), "--checkpoint", str(pretrained_tiny), "--adapter", str(adapter), *out], capsys
    )
    assert str(adapter) in err and "another base checkpoint" in err
    assert not (tmp_path / "out").exists()
