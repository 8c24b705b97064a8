"""``benchmarks/gpu_check.py --quick`` on the CPU: its five parts run and record their results.

The script is what a session with a lent GPU runs once; this keeps it working between such sessions. It runs
in the default suite (``slow``: about a minute and a half on two cores).
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
HAS_HF = all(importlib.util.find_spec(name) is not None for name in ("transformers", "peft"))

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--quick", "--device", "cpu",
               "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.is_file(), done.stderr[-3000:]
    return json.loads(out.read_text())


def test_every_part_runs_and_records_its_results(report: dict[str, Any]) -> None:
    parts = report["parts"]
    assert list(parts) == ["api", "train_step", "vs_peft", "eval", "static_k"]
    errors = {name: part.get("error") for name, part in parts.items() if not part["ok"]}
    if not HAS_HF:  # the comparison needs them; it says how to get them
        assert "pip install transformers peft" in errors.pop("vs_peft", "")
    assert not errors, errors
    assert all(part["seconds"] > 0 for part in parts.values())
    assert report["environment"]["torch"] and report["check"]["quick"]

    api = parts["api"]
    assert api["steps"] == 5 and len(api["losses"]) == 5
    assert all(math.isfinite(loss) and loss > 0 for loss in api["losses"])
    assert api["loss_first"] == pytest.approx(sum(api["losses"][:2]) / 2)
    assert api["loss_last"] == pytest.approx(sum(api["losses"][-2:]) / 2)
    assert api["loss_decreased"] == (api["loss_last"] < api["loss_first"]) and api["adapter_written"]

    lora = parts["train_step"]["modes"]["lora"]
    assert lora["targets_per_s"] > 0 and lora["peak_abs_bytes"] > 0 and lora["flops_per_step"] > 0
    assert lora["percent_of_bf16_peak"] is None  # no card on the CPU

    evaluation = parts["eval"]
    assert evaluation["images"] == 2 and evaluation["prompt_count"] > 0
    assert 0.0 <= evaluation["metrics"]["miou@1"] <= 1.0

    static = parts["static_k"]  # not compiled in the quick form: the static-K path's gradients are the eager ones
    assert static["graphs"] == 0 and static["grad_relative_difference"] < 1e-4
    assert all(static[name]["best_s"] > 0 for name in ("eager", "static_eager", "static_compiled"))


@pytest.mark.skipif(not HAS_HF, reason="the comparison needs transformers and peft")
def test_vs_peft_compares_equal_work(report: dict[str, Any]) -> None:
    part = report["parts"]["vs_peft"]
    results, ratios = part["results"], part["ratios"]
    assert "a/hf" in results and any(name.startswith("a/ours/") for name in results)
    assert ratios and set(ratios) == {name.replace("ours/", "") for name in results if name.startswith("a/ours/")}
    for ratio in ratios.values():
        assert all(ratio[key] > 0 and math.isfinite(ratio[key]) for key in ("speed", "memory", "memory_abs"))
    hf = results["a/hf"]
    for name, ours in results.items():  # equal work: the same LoRA tensors and prompts on both sides
        assert ours["trainable"] == hf["trainable"], name
        assert ours["prompts_per_step"] == hf["prompts_per_step"] == 4, name
    assert part["machine"]["transformers"] and part["machine"]["peft"]
