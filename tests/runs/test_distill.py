"""``lora-sam distill``: the warm start computes what the v1 teacher's decoder side computes, the run resumes
exactly, and its output loads strictly into Meta's classes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

pytest.importorskip("sam2")

from lora_sam.data.synth import make_synthetic  # noqa: E402
from lora_sam.models.families import build  # noqa: E402
from lora_sam.runs.distill import DistillConfig, distill, warm_start  # noqa: E402

SIDE = 64


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("distill_data")
    make_synthetic(root, 3, seed=7, image_size=(96, 128))
    return root


def test_the_warm_start_copies_the_teachers_prompt_encoder_and_decoder_functions(tiny_checkpoint: Path) -> None:
    teacher = build("tiny", tiny_checkpoint, (SIDE, SIDE)).module
    student = build("sam2.1_mini", "random", (SIDE, SIDE)).module
    copied = warm_start(student, teacher)
    assert any(".mlp.layers.0." in k for k in copied) and any("iou_prediction_head" in k for k in copied)
    assert not any(k.startswith("image_encoder.") for k in copied)
    decoder, their_decoder = student.sam_mask_decoder, teacher.mask_decoder
    x = torch.randn(5, 7, 64)
    for mine, theirs in zip(decoder.transformer.layers, their_decoder.transformer.layers):
        torch.testing.assert_close(mine.mlp(x), theirs.mlp(x))  # 2048 hidden units computing the teacher's 256
    torch.testing.assert_close(decoder.iou_prediction_head(x), torch.sigmoid(their_decoder.iou_prediction_head(x)))
    points = (torch.rand(3, 2, 2) * SIDE, torch.tensor([[1, 0]] * 3))
    masks = torch.randn(3, 1, SIDE // 4, SIDE // 4)
    for mine, theirs in zip(student.sam_prompt_encoder(points, None, masks),
                            teacher.prompt_encoder(points, None, masks)):
        torch.testing.assert_close(mine, theirs)
    zeroed = [decoder.conv_s0.weight, decoder.conv_s0.bias, decoder.conv_s1.weight, decoder.conv_s1.bias,
              student.no_mem_embed]  # the upscaling starts as v1's, without the high-resolution features
    assert all(float(t.detach().abs().max()) == 0 for t in zeroed)


def test_a_teacher_of_another_width_is_an_error_naming_the_tensor() -> None:
    student = build("sam2.1_mini", "random", (SIDE, SIDE)).module
    teacher = torch.nn.Module()  # a decoder side 256 wide (vit_b's), the student's 64
    teacher.prompt_encoder = torch.nn.Module()
    teacher.prompt_encoder.no_mask_embed = torch.nn.Embedding(1, 256)
    with pytest.raises(ValueError, match="prompt_embed_dim"):
        warm_start(student, teacher)


def test_a_resumed_distillation_ends_where_an_uninterrupted_one_does(tmp_path: Path, data: Path,
                                                                     tiny_checkpoint: Path) -> None:
    config = DistillConfig(teacher=str(tiny_checkpoint), teacher_type="tiny", side=SIDE, steps=6, batch_size=2,
                           log_every=1)
    straight = distill(tmp_path / "a", data, config, progress=False)
    assert distill(tmp_path / "b", data, config, stop_after_s=0.0, progress=False) == {"step": 1, "finished": False}
    resumed = distill(tmp_path / "b", data, config, progress=False)
    assert straight["steps"] == resumed["steps"] == 6
    a = torch.load(tmp_path / "a" / "distilled.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "distilled.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)
    rows = (tmp_path / "b" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["step", "1", "2", "3", "4", "5", "6"]
    assert straight["last_relative_mse"] < straight["first_relative_mse"]  # a regression from random weights
    build("sam2.1_mini", tmp_path / "a" / "distilled.pt", (SIDE, SIDE))  # Meta's format, loaded strictly
    again = distill(tmp_path / "a", data, config, progress=False)  # finished: nothing to train, the same record
    assert (again["steps"], again["last_relative_mse"]) == (straight["steps"], straight["last_relative_mse"])
    with pytest.raises(ValueError, match="other settings"):
        distill(tmp_path / "a", data, replace(config, lr=1e-2), progress=False)
