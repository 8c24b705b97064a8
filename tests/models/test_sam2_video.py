"""The merged export of a fine-tuned SAM 2.1 in Meta's ``SAM2VideoPredictor``: a click on a clip's first frame gives
the mask ``SAM2ImagePredictor`` gives on that frame, not an empty one (the video predictor empties every mask whose
object score is <= 0, so this needs the object-score head trained)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("sam2")

from sam2.build_sam import build_sam2, build_sam2_video_predictor  # noqa: E402
from sam2.sam2_image_predictor import SAM2ImagePredictor  # noqa: E402

from lora_sam import LoRASAM, export_merged, get_loaders  # noqa: E402
from lora_sam.models import checkpoints  # noqa: E402
from lora_sam.models.sam2_1.model import MINI_OVERRIDES, MODEL_TYPES  # noqa: E402
from lora_sam.training.recipe import prompt_generator  # noqa: E402

MINI = "sam2.1_mini"
pytestmark = pytest.mark.slow


def _clip(folder: Path, frames: int = 3) -> list[np.ndarray]:
    """JPEG frames (DAVIS' layout, 00000.jpg, ...) of a bright ellipse moving right on a textured background;
    returns the frames as decoded from the files."""
    folder.mkdir()
    h, w = 240, 320
    rng = np.random.default_rng(0)
    background = rng.integers(60, 100, size=(h, w, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    out = []
    for t in range(frames):
        frame = background.copy()
        inside = ((xx - (140 + 6 * t)) / 50.0) ** 2 + ((yy - 120) / 35.0) ** 2 <= 1
        frame[inside] = (220, 180, 40)
        path = folder / f"{t:05d}.jpg"
        Image.fromarray(frame).save(path, quality=95)
        out.append(np.asarray(Image.open(path).convert("RGB")))
    return out


def test_a_fine_tuned_merged_export_in_sam2_video_predictor_gives_the_image_predictors_mask(
        tmp_path: Path, synthetic_root: Path) -> None:
    torch.manual_seed(0)
    module = LoRASAM(4, 4.0, model_type=MINI, checkpoint="builtin")  # SAM 2.1's rules: the object score trains
    train, _ = get_loaders(synthetic_root, batch_size=1, image_size=(224, 224), frame="square", val_fraction=0.0,
                           num_workers=0, masks_per_image=4)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=2e-3)
    for step, batch in zip(range(3), train):
        optimizer.zero_grad()
        module.interactive_step(batch, prompt_generator(0, step)).mean("total").backward()
        optimizer.step()
    adapter = module.export_weights(tmp_path / "adapter.safetensors")
    merged = export_merged(adapter, tmp_path / "merged.pt", base_checkpoint=checkpoints.builtin_checkpoint(MINI))

    frames = _clip(tmp_path / "clip")
    point, label = np.array([[140.0, 120.0]], dtype=np.float32), np.array([1], dtype=np.int32)
    image_predictor = SAM2ImagePredictor(build_sam2(MODEL_TYPES[MINI], str(merged), device="cpu",
                                                    hydra_overrides_extra=list(MINI_OVERRIDES)))
    image_predictor.set_image(frames[0])
    masks, ious, _ = image_predictor.predict(point_coords=point, point_labels=label, multimask_output=True)
    expected = masks[int(np.argmax(ious))] > 0  # one click: the video predictor keeps the best of the 3 outputs

    video = build_sam2_video_predictor(MODEL_TYPES[MINI], str(merged), device="cpu",
                                       hydra_overrides_extra=list(MINI_OVERRIDES))  # Meta's loader: strict
    state = video.init_state(video_path=str(tmp_path / "clip"))
    _, ids, logits = video.add_new_points_or_box(state, frame_idx=0, obj_id=1, points=point, labels=label)
    got = (logits[0, 0] > 0).numpy()
    assert list(ids) == [1] and got.shape == expected.shape
    assert got.sum() > 0.01 * got.size, "the video predictor emptied the mask: its object score is <= 0"
    iou = (got & expected).sum() / (got | expected).sum()
    # not exact: the video loader resizes frames with PIL's bicubic, the image predictor with torchvision's
    # bilinear, and the video predictor fills holes of up to 8 px
    assert iou > 0.9, f"IoU {iou:.3f} between the video predictor's mask and SAM2ImagePredictor's"
