"""``lora_sam.runs.allocator.tune_allocator``: SAM's mask decoder called again on 28 prompts faults far fewer pages in
(counted by the kernel's minor page faults) than under the C library's defaults, which ``LORA_SAM_MALLOC=system``
keeps."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lora_sam.runs.allocator import MALLOC_ENV

pytestmark = [pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux's"),
              pytest.mark.slow]  # two processes, 4 decoder calls each

_PROBE = """
import json, resource
from lora_sam.runs.allocator import tune_allocator

applied = tune_allocator()
import torch
from segment_anything.modeling import MaskDecoder, TwoWayTransformer

torch.manual_seed(0)
decoder = MaskDecoder(transformer_dim=256, transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048,
                                                                          num_heads=8)).eval()
image, pe = torch.randn(1, 256, 64, 64), torch.randn(1, 256, 64, 64)
sparse, dense = torch.randn(28, 2, 256), torch.randn(28, 256, 64, 64)

def decode():  # SAM's decoder on one image and 28 prompts, as the evaluation calls it
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    with torch.no_grad():
        decoder(image, pe, sparse, dense, multimask_output=True)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults = [decode() for _ in range(4)]
print(json.dumps({"applied": applied, "again": tune_allocator(), "faults": sum(faults[1:])}))
"""


def _probe(setting: str | None) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k not in (MALLOC_ENV, "THP_MEM_ALLOC_ENABLE")}
    if setting is not None:
        env[MALLOC_ENV] = setting
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_freed_large_tensors_fault_far_fewer_pages_in() -> None:
    tuned, system = _probe(None), _probe("system")
    assert tuned["applied"] is True and tuned["again"] is True
    assert system["applied"] is False and system["again"] is False
    assert system["faults"] > 3 * 117 * 2**20 // 4096, system  # at least the 117 MB repeated embedding, each call
    assert tuned["faults"] < 0.25 * system["faults"], (tuned, system)
