from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("train_script.py")


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SCRIPT), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


@pytest.mark.slow
def test_kill_and_resume_continues_from_the_saved_step(tmp_path: Path, tiny_checkpoint: Path,
                                                       synthetic_root: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    proc = start(str(synthetic_root), str(out), str(tiny_checkpoint), "6", "1", "--pause-after", "3")
    deadline = time.time() + 240
    while not (out / "paused").exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "the run never reached step 3"
        time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    saved_step = last["global_step"]
    assert saved_step >= 3
    # A LoRA checkpoint holds LoRA tensors only: no frozen base weights.
    assert all(k.endswith(("lora_A", "lora_B")) for k in last["state_dict"])
    assert not list((out / "checkpoints").glob("*.tmp"))

    resumed = start(str(synthetic_root), str(out), str(tiny_checkpoint), "6", "1", "--resume")
    log, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, log
    starts = [int(s) for s in (out / "starts.txt").read_text().split()]
    assert starts == [0, saved_step]
    assert (out / "final_step.txt").read_text() == "6"
    steps = [json.loads(line)["step"] for line in (out / "rank0.txt").read_text().splitlines()]
    assert steps[-(6 - saved_step):] == list(range(saved_step, 6))


@pytest.mark.slow
def test_ddp_two_cpu_processes_see_different_data(tmp_path: Path, tiny_checkpoint: Path,
                                                  synthetic_root: Path) -> None:
    out = tmp_path / "ddp"
    out.mkdir()
    proc = start(str(synthetic_root), str(out), str(tiny_checkpoint), "3", "2")
    log, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, log
    seen = {}
    for rank in (0, 1):
        lines = (out / f"rank{rank}.txt").read_text().splitlines()
        seen[rank] = {i for line in lines for i in json.loads(line)["ids"]}
        assert len(lines) == 3
    assert seen[0] and seen[1] and not seen[0] & seen[1]


@pytest.mark.slow
def test_ddp_on_shards_of_different_sizes_runs_whole_epochs(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """Rank 0 reads shards of 3 + 1 images, rank 1 one of 3: with samples_per_epoch both run 2 steps an
    epoch and whole epochs end cleanly (without it, rank 0 runs a 4th step alone: its all-reduce waits for
    rank 1, a hang on NCCL and a crash on gloo, checked by hand)."""
    from data_fixtures import synth, write_shards

    shards = write_shards(synth(tmp_path / "folder", images=7, size=(64, 96)), tmp_path / "tars", per_shard=3)
    assert len(shards) == 3
    out = tmp_path / "ddp_shards"
    out.mkdir()
    proc = start(str(shards[0].parent), str(out), str(tiny_checkpoint), "-1", "2", "--samples-per-epoch", "4",
                 "--epochs", "2")
    log, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, log
    assert (out / "final_step.txt").read_text() == "4"
    for rank in (0, 1):
        steps = [json.loads(line)["step"] for line in (out / f"rank{rank}.txt").read_text().splitlines()]
        assert steps == [0, 1, 2, 3]


def test_user_code_from_the_readme(tmp_path: Path, synthetic_root: Path, monkeypatch) -> None:
    """The README's first example, verbatim but for the CPU and a short run; model and data from the environment."""
    monkeypatch.setenv("LORA_SAM_MODEL_TYPE", "tiny")
    monkeypatch.setenv("LORA_SAM_DATA", str(synthetic_root))
    monkeypatch.chdir(tmp_path)
    import pytorch_lightning as pl

    import lora_sam

    model = lora_sam.LoRASAM(4, 1)
    train_loader, val_loader = lora_sam.get_loaders()
    trainer = pl.Trainer(devices=1, accelerator="cpu", max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(model, train_loader, val_loader)
    assert trainer.global_step == 2
    assert {"train/loss", "val/loss", "val/miou"} <= set(trainer.callback_metrics)
    assert list(tmp_path.glob("lightning_logs/version_0/adapter.safetensors"))


def test_bf16_mixed_precision_trains(tmp_path: Path, tiny_checkpoint: Path, synthetic_root: Path) -> None:
    import pytorch_lightning as pl

    import lora_sam

    model = lora_sam.LoRASAM(4, 4, model_type="tiny", checkpoint=str(tiny_checkpoint), image_size=(64, 96),
                             masks_per_image=4, iterations=2)
    train, val = lora_sam.get_loaders(synthetic_root, image_size=(64, 96), batch_size=1, num_workers=0,
                                      masks_per_image=4)
    trainer = pl.Trainer(accelerator="cpu", precision="bf16-mixed", max_steps=2, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=1,
                         default_root_dir=tmp_path)
    trainer.fit(model, train, val)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert (tmp_path / "adapter.safetensors").stat().st_size > 0


def _readme_tiny_cpu_lines() -> list[str]:
    """The two CPU lines of docs/training.md ("On the CPU")."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "training.md").read_text()
    return [line.split("#")[0].strip() for line in page.splitlines()
            if line.startswith("lora-sam synth") and "configs/tiny_cpu.yaml" in line]


@pytest.mark.slow
def test_the_readme_tiny_cpu_commands_run_as_written(tmp_path: Path) -> None:
    """The documentation's two CPU lines (the base's own domain, then a domain it has not seen), run as written
    in a fresh folder with the repository's config file, shortened: 6 images and 3 steps. Each writes the
    adapter, a metrics.csv whose val curve starts at step 0 (the base's own numbers), TensorBoard's events
    beside it and the iteration records."""
    import csv
    import shlex
    import shutil

    lines = _readme_tiny_cpu_lines()
    assert len(lines) == 2, lines
    shutil.copytree(Path(__file__).resolve().parents[2] / "configs", tmp_path / "configs")
    exe = Path(sys.executable).with_name("lora-sam")
    for n, line in enumerate(lines):
        for command in line.split("&&"):
            args = shlex.split(command)
            assert args[0] == "lora-sam"
            args = [str(exe), *args[1:]]
            if args[1] == "synth":
                args[args.index("--images") + 1] = "6"
            else:
                args += ["--trainer.max_steps", "3", "--trainer.val_check_interval", "3",
                         "--trainer.default_root_dir", f"runs/line{n}"]
            done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        version = tmp_path / f"runs/line{n}/lightning_logs/version_0"
        assert (version / "adapter.safetensors").stat().st_size > 0
        rows = list(csv.DictReader((version / "metrics.csv").open()))
        val_steps = [int(r["step"]) for r in rows if r.get("val/miou")]
        assert val_steps[0] == 0 and val_steps[-1] >= 2, val_steps
        # TensorBoard's event file beside the CSV, and the report's iteration records
        assert list(version.glob("events.out.tfevents.*")) and (version / "iterations.pt").is_file()


@pytest.mark.slow
def test_lr_auto_runs_the_finder_and_trains_with_its_suggestion(tmp_path: Path, synthetic_root: Path) -> None:
    """`lora-sam fit --lr auto`: Lightning's Tuner.lr_find first, its plot in the run folder, and the run
    trains with the suggested learning rate (recorded in hparams.yaml)."""
    import yaml

    config = Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu.yaml"
    exe = Path(sys.executable).with_name("lora-sam")
    done = subprocess.run([str(exe), "fit", "--config", str(config), "--lr", "auto", "--lr_find_steps", "20",
                           "--data.root", str(synthetic_root), "--model.image_size", "[64, 96]",
                           "--model.recipe.masks_per_image", "4", "--trainer.max_steps", "2",
                           "--trainer.default_root_dir", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    version = tmp_path / "lightning_logs" / "version_0"
    assert (version / "lr_find.png").stat().st_size > 2000
    lr = yaml.safe_load((version / "hparams.yaml").read_text())["optim"]["lr"]
    assert lr is not None and 1e-6 < lr < 1.0 and lr != 1e-3  # the suggestion, not the base's default
    assert "lr_find suggests lr" in done.stdout + done.stderr


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(__file__).resolve().parents[2] / "configs").glob("*.yaml")))
@pytest.mark.slow
def test_every_shipped_config_parses_into_the_settings_groups(name: str) -> None:
    """Each YAML in configs/ is read by the fit command (no model built): its groups and their fields exist."""
    import yaml

    config = Path(__file__).resolve().parents[2] / "configs" / name
    exe = Path(sys.executable).with_name("lora-sam")
    done = subprocess.run([str(exe), "fit", "--config", str(config), "--print_config"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    parsed, given = yaml.safe_load(done.stdout)["model"], yaml.safe_load(config.read_text())["model"]
    for group, values in given.items():
        if isinstance(values, dict):
            assert {k: parsed[group][k] for k in values} == values, group
