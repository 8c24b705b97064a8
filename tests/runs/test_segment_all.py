"""``lora-sam segment-all`` on both families: SAM 2.1 through Meta's ``SAM2AutomaticMaskGenerator``, the quality
thresholds from the base's model card, and an image that keeps no mask explained (what each filter removed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from lora_sam.cli import main
from lora_sam.data.synth import make_synthetic
from lora_sam.evaluation.automatic import ALL_CANDIDATES, filter_candidates
from lora_sam.models.checkpoints import automatic_defaults, builtin_card
from lora_sam.models.families import build_network, mask_generator

POINTS = "4"  # a 4x4 grid: 48 candidates, enough to compare and cheap on 2 cores


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small synthetic scene: the built-in bases' own domain, a seed they never saw."""
    return make_synthetic(tmp_path_factory.mktemp("scene"), 1, seed=77, image_size=(96, 128))[0]


def _read(path: Path) -> np.ndarray:
    return np.array(Image.open(path).convert("RGB"))


def _masks(out: Path, scene: Path) -> list[np.ndarray]:
    document = json.loads((out / f"{scene.stem}.json").read_text())
    return [mask_utils.decode(a["segmentation"]).astype(bool) for a in document["annotations"]]


def test_thresholds_come_from_a_built_in_base_s_card_and_meta_s_otherwise(tiny_checkpoint: Path) -> None:
    for model_type in ("tiny", "sam2.1_mini"):
        card = json.loads(builtin_card(model_type).read_text())["automatic"]
        for checkpoint in ("builtin", None):
            found, source = automatic_defaults(model_type, checkpoint)
            assert found == {k: card[k] for k in ("pred_iou_thresh", "stability_score_thresh")}
            assert builtin_card(model_type).name in source
    for model_type, checkpoint in (("tiny", tiny_checkpoint), ("tiny", "random"), ("sam2.1_hiera_t", "random")):
        found, source = automatic_defaults(model_type, checkpoint)
        assert found == {} and source.startswith("Meta's")


def test_sam2_masks_are_sam2_automatic_mask_generator_s(scene: Path, tmp_path: Path, capsys) -> None:
    """segment-all on the built-in sam2.1_mini writes the masks of Meta's ``SAM2AutomaticMaskGenerator`` built by
    hand on the same network with the same options (the base's thresholds, from its card)."""
    pytest.importorskip("sam2")
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    out = tmp_path / "out"
    assert main(["segment-all", str(scene), "--model-type", "sam2.1_mini", "--checkpoint", "builtin",
                 "--out", str(out), "--points-per-side", POINTS]) == 0
    said = capsys.readouterr().out
    thresholds, _ = automatic_defaults("sam2.1_mini", "builtin")
    assert "SAM2AutomaticMaskGenerator" in said and "sam2.1_mini_card.json" in said
    assert f"predicted IoU > {thresholds['pred_iou_thresh']:g}" in said
    network = build_network("sam2.1_mini", "builtin", (1024, 1024))
    reference = SAM2AutomaticMaskGenerator(network, points_per_side=int(POINTS), **thresholds)
    records = reference.generate(_read(scene))
    written = _masks(out, scene)
    assert len(written) == len(records) > 0
    assert all(np.array_equal(mask, record["segmentation"]) for mask, record in zip(written, records))
    assert (out / f"{scene.stem}_masks.png").is_file()


@pytest.fixture(scope="module")
def tiny_1024() -> torch.nn.Module:
    return build_network("tiny", "builtin", (1024, 1024))


@pytest.mark.slow
def test_the_filters_counted_are_the_generator_s(tiny_1024: torch.nn.Module, scene: Path) -> None:
    """``filter_candidates`` over every candidate (the filters off) keeps exactly what the generator keeps with
    the thresholds on, in its order, for several pairs."""
    image = _read(scene)
    candidates = mask_generator(tiny_1024, points_per_side=int(POINTS), **ALL_CANDIDATES).generate(image)
    assert len(candidates) == 3 * int(POINTS) ** 2
    ious = [r["predicted_iou"] for r in candidates]
    stability = [r["stability_score"] for r in candidates]
    for pair in ((0.0, 0.0), (float(np.median(ious)), 0.0), (0.0, float(np.median(stability))),
                 (float(np.quantile(ious, 0.3)), float(np.quantile(stability, 0.3)))):
        kept, removed = filter_candidates(candidates, *pair, 0.7)
        generated = mask_generator(tiny_1024, points_per_side=int(POINTS), pred_iou_thresh=pair[0],
                                   stability_score_thresh=pair[1]).generate(image)
        assert [candidates[i]["bbox"] for i in kept] == [r["bbox"] for r in generated], pair
        assert [candidates[i]["predicted_iou"] for i in kept] == [r["predicted_iou"] for r in generated], pair
        assert sum(removed.values()) + len(kept) == len(candidates)


def test_an_image_that_keeps_no_mask_is_explained(scene: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["segment-all", str(scene), "--model-type", "tiny", "--checkpoint", "builtin", "--out", str(out),
                 "--points-per-side", POINTS, "--pred-iou-thresh", "1.0", "--stability-score-thresh", "1.0"]) == 0
    captured = capsys.readouterr()
    assert "--pred-iou-thresh" in captured.out and "0 masks in 1 image(s)" in captured.out
    err = " ".join(captured.err.split())
    assert f"{scene.name}: no mask kept of its 48 candidate masks" in err
    assert "the predicted-IoU filter (> 1, --pred-iou-thresh) removed 48" in err
    assert "Lower --pred-iou-thresh" in err and "--stability-score-thresh" in err
    assert _masks(out, scene) == []
