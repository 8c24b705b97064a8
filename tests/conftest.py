"""Shared fixtures: a tiny SAM saved as an official-format checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import data_fixtures

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random ``tiny`` SAM saved with ``torch.save(state_dict)`` like the official files."""
    from lora_sam.models.sam_v1.model import build_sam

    torch.manual_seed(0)
    sam = build_sam("tiny", "random", image_size=(1024, 1024))
    path = tmp_path_factory.mktemp("ckpt") / "sam_tiny_random.pth"
    torch.save(sam.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real sample data folder (see ``data_fixtures.SHARED_DATA``), or skip."""
    return data_fixtures.shared_data()


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight synthetic SA-1B images (120x160) with nested masks."""
    from lora_sam.data.synth import make_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic(root, images=8, seed=0, image_size=(120, 160))
    return root
