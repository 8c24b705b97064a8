"""Fixtures of the evaluation tests: three synthetic SA-1B images."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_sam.data.synth import make_synthetic


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    make_synthetic(root, 3, image_size=(96, 128), seed=1)
    return root
