"""Fixtures of the app tests: a tiny base, a LoRA adapter and a full model at 64x96, their bank, images."""
# This folder is named to sort after every other test: Gradio starts threads, and a DataLoader worker
# forked from a process with those threads can deadlock, so no test that forks workers may run after it.

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from app_fixtures import SIZE, make_adapter

from lora_sam.models.sam_v1.model import build_sam


@pytest.fixture(scope="session")
def model_files(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("app_models")
    full = build_sam("tiny", tiny_checkpoint, SIZE)
    with torch.no_grad():
        full.mask_decoder.output_hypernetworks_mlps[0].layers[-1].bias.add_(0.2)
    torch.save(full.state_dict(), folder / "model.pth")
    return {"base": tiny_checkpoint, "lora": make_adapter(folder, tiny_checkpoint), "full": folder / "model.pth"}


@pytest.fixture(scope="session")
def bank(model_files: dict[str, Path]):
    from lora_sam.app.models import ModelBank

    return ModelBank(model_type="tiny", checkpoint=model_files["base"], image_size=SIZE,
                     adapters=[model_files["lora"]], fulls=[model_files["full"]], device="cpu")


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A 150x220 RGB image with two discs on a gradient."""
    yy, xx = np.mgrid[:150, :220]
    image = np.stack([xx * 255 // 220, yy * 255 // 150, np.full_like(xx, 90)], axis=-1).astype(np.uint8)
    image[(xx - 70) ** 2 + (yy - 60) ** 2 < 30**2] = (250, 240, 20)
    image[(xx - 160) ** 2 + (yy - 100) ** 2 < 25**2] = (20, 30, 200)
    return image


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lora_sam.data.synth import make_synthetic

    root = tmp_path_factory.mktemp("app_synth")
    make_synthetic(root, 2, image_size=(96, 128), seed=3)
    return root
