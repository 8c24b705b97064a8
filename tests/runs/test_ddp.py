"""DDP on the CPU (2 gloo processes, the tiny model) for every recipe option, and ranks that agree."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the whole module: its runs are shared by module fixtures

SCRIPT = Path(__file__).with_name("ddp_options_script.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, synthetic_root: Path) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp_options")
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, str(SCRIPT), str(synthetic_root), str(tiny_checkpoint), str(out),
                               str(rank), port], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs[0][-3000:] + logs[1][-3000:]
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]


CASES = ["lora defaults", "lora boxes only, 1 iteration", "lora points only, 1 iteration",
         "lora boxes only, single output", "lora points only, mask-only iteration", "full boxes only",
         "full points only, 1 iteration", "full defaults", "points on rank 0, boxes on rank 1, validated",
         "non-finite loss on rank 1, skipped"]


@pytest.mark.parametrize("case", CASES)
def test_every_recipe_option_trains_under_ddp(ranks: list[dict], case: str) -> None:
    """Without every trainable parameter in every step's graph, DDP stops at the second step ("parameters
    that were not used in producing the loss"): a step of boxes only never uses the mask-prompt convs."""
    assert [r[case]["result"] for r in ranks] == ["ok", "ok"]


def test_validation_logs_the_same_keys_and_values_on_every_rank(ranks: list[dict]) -> None:
    """Rank 0 draws only points (3 iterations), rank 1 only boxes (1): both log every key, reduced alike."""
    case = "points on rank 0, boxes on rank 1, validated"
    val0, val1 = ranks[0][case]["val"], ranks[1][case]["val"]
    assert {"val/loss", "val/miou", "val/it1/loss", "val/it3/loss"} <= set(val0)
    assert val0 == val1


def test_a_non_finite_loss_on_one_rank_stops_every_rank_with_one_message(ranks: list[dict]) -> None:
    results = [r["non-finite loss on rank 1"]["result"] for r in ranks]
    assert results[0] == results[1]
    assert results[0].startswith("FloatingPointError: non-finite train loss on rank 1 of 2 at global step 0")
