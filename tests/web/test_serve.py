"""``lora-sam app``: help and the missing-extra error without Gradio, --run folders, bad files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from app_fixtures import SIZE, make_adapter
from PIL import Image

from lora_sam.app.serve import DEMO_RUN, INSTALL_HINT, resolve_settings
from lora_sam.cli import main

NO_GRADIO = "import sys; sys.modules['gradio'] = None; from lora_sam.cli import main; sys.exit(main({argv}))"


@pytest.mark.slow
def test_help_works_without_gradio() -> None:
    done = subprocess.run([sys.executable, "-c", NO_GRADIO.format(argv=["app", "--help"])], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for option in ("--checkpoint", "--model-type", "--adapter", "--full", "--image-size", "--data", "--run",
                   "--port", "--host", "--share"):
        assert option in done.stdout


def test_without_gradio_it_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "gradio", None)
    assert main(["app"]) == 2
    assert INSTALL_HINT in capsys.readouterr().err and INSTALL_HINT == 'pip install "lora_sam[app]"'


def _args(**given):
    from argparse import ArgumentParser

    from lora_sam.app.serve import AppConfig, add_arguments
    from lora_sam.settings import from_args

    parser = ArgumentParser()
    add_arguments(parser)
    argv = []
    for key, value in given.items():
        for item in value if isinstance(value, list) else [value]:
            argv += [f"--{key.replace('_', '-')}", *map(str, item if isinstance(item, tuple) else [item])]
    return from_args(AppConfig, parser.parse_args(argv))


def test_a_run_folder_gives_its_base_adapter_full_model_and_data(tmp_path: Path, synth_root: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "lora").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "lora" / "adapter.safetensors").write_bytes(b"x")
    (tmp_path / "full" / "model.pth").write_bytes(b"x")
    settings = {"model_type": "tiny", "checkpoint": "/base.pth", "image_size": [64, 96], "data": str(synth_root)}
    (tmp_path / "compare.json").write_text(json.dumps({"settings": settings}))
    got = resolve_settings(_args(run=tmp_path))
    assert got.run == str(tmp_path)
    assert (got.model_type, got.checkpoint, got.image_size, got.data) == ("tiny", "/base.pth", (64, 96), str(synth_root))
    assert got.adapters == (str(tmp_path / "lora" / "adapter.safetensors"),)
    assert got.fulls == (str(tmp_path / "full" / "model.pth"),)
    explicit = resolve_settings(_args(run=tmp_path, image_size=(32, 48), checkpoint="other.pth"))
    assert explicit.image_size == (32, 48) and explicit.checkpoint == "other.pth"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # no runs/demo here: no run, the built-in base's defaults
    assert resolve_settings(_args()).image_size == (160, 256) and resolve_settings(_args()).model_type == "tiny"
    with pytest.raises(FileNotFoundError, match="compare.json not found"):
        resolve_settings(_args(run=tmp_path / "lora"))


def test_with_no_model_named_the_demo_results_are_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from argparse import ArgumentParser

    from lora_sam.runs import demo

    parser = ArgumentParser()
    demo.add_arguments(parser)
    assert parser.parse_args([]).out == DEMO_RUN, "the app must look where lora-sam demo writes"
    monkeypatch.chdir(tmp_path)
    assert resolve_settings(_args()).run is None and resolve_settings(_args()).adapters == ()
    for part in ("lora/adapter.safetensors", "full/model.pth"):
        (DEMO_RUN / part).parent.mkdir(parents=True, exist_ok=True)
        (DEMO_RUN / part).write_bytes(b"x")
    (DEMO_RUN / "compare.json").write_text(json.dumps({"settings": {"image_size": [160, 256], "checkpoint": None}}))
    got = resolve_settings(_args())
    assert got.run == str(DEMO_RUN) and got.checkpoint is None
    assert got.adapters == (str(DEMO_RUN / "lora/adapter.safetensors"),)
    assert got.fulls == (str(DEMO_RUN / "full/model.pth"),)
    named = resolve_settings(_args(adapter="mine.safetensors"))
    assert named.run is None and named.adapters == ("mine.safetensors",) and named.fulls == ()


def test_an_adapter_that_does_not_fit_stops_the_command(tmp_path: Path, tiny_checkpoint: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("gradio")
    wrong = make_adapter(tmp_path, tiny_checkpoint, model_type="vit_b")
    rc = main(["app", "--checkpoint", str(tiny_checkpoint), "--image-size", *map(str, SIZE), "--adapter", str(wrong)])
    assert rc == 2 and str(wrong) in capsys.readouterr().err


def test_a_fixed_split_root_lists_the_held_out_images_first(tmp_path: Path) -> None:
    """The real demo's data (``lora-sam nuclei``'s ``train/`` and ``val/``, no dataset at the top): the page lists
    val's images, then train's, and loads each from its own folder."""
    from lora_sam.app.images import DatasetImages
    from lora_sam.data.loaders import open_dataset

    rng = np.random.default_rng(0)
    for part, names in (("train", ("a", "b")), ("val", ("c",))):
        for name in names:  # an instance-label folder: images/NAME.png and labels/NAME.png (0 background)
            labels = np.zeros((48, 64), np.uint16)
            labels[10:30, 12:40], labels[32:44, 40:60] = 1, 2
            for sub, array in (("images", rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)), ("labels", labels)):
                (tmp_path / part / sub).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(tmp_path / part / sub / f"{name}.png")
    images = DatasetImages(tmp_path, SIZE, frame="pad")
    expected = {part: open_dataset(tmp_path / part, image_size=SIZE, frame="pad") for part in ("train", "val")}
    order = [("val", 0), ("train", 0), ("train", 1)]
    assert images.names == [str(expected[part].image_id(i)) for part, i in order]
    for index, (part, i) in enumerate(order):
        loaded, reference = images.load(index), expected[part][i]
        assert loaded.sample["image_id"] == reference["image_id"]
        assert torch.equal(loaded.sample["image"], reference["image"])
