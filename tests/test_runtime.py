"""``lora_sam.runtime.tune_allocator``: tensors made and freed in a loop, as a decoder call makes them, fault far
fewer pages in (counted by the kernel's minor page faults) than under the C library's defaults, which
``LORA_SAM_MALLOC=system`` keeps."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lora_sam.runtime import MALLOC_ENV

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux's")

_PROBE = """
import json, os, resource
from lora_sam.runtime import tune_allocator

applied = tune_allocator()  # before torch's first allocation, as the command line calls it
import torch

def cycle():  # a 128 MB tensor and two made from it, then all freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(32 * 2**20)
    y = x * 2
    z = y[: 16 * 2**20] + 1
    del x, y, z
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults = [cycle() for _ in range(5)]
print(json.dumps({"applied": applied, "again": tune_allocator(), "faults": sum(faults[1:]),
                  "thp": os.environ.get("THP_MEM_ALLOC_ENABLE")}))
"""


def _probe(setting: str | None) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k not in (MALLOC_ENV, "THP_MEM_ALLOC_ENABLE")}
    if setting is not None:
        env[MALLOC_ENV] = setting
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_freed_large_tensors_fault_far_fewer_pages_in() -> None:
    tuned, system = _probe(None), _probe("system")
    assert tuned["applied"] is True and tuned["again"] is True and tuned["thp"] == "1"
    assert system["applied"] is False and system["again"] is False and system["thp"] is None
    pages_per_cycle = (128 + 128 + 64) * 2**20 // 4096
    assert system["faults"] > 0.5 * 4 * pages_per_cycle, system  # the defaults fault every tensor in again
    assert tuned["faults"] < 0.25 * system["faults"], (tuned, system)
