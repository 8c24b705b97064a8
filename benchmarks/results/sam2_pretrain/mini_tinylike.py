"""Resume (or start) the tiny-shaped Hiera run of README.md ("A Hiera shaped like v1's tiny"):

    python benchmarks/results/sam2_pretrain/mini_tinylike.py

``sam2.1_mini`` with 160 channels and 4 blocks at stride 16 (two global), from random weights at 224x224 with
v1's first-stage settings; the overrides replace ``sam2_config.MINI_OVERRIDES`` in this process only.
"""

import sys

import lora_sam.models.sam2_1.config as sc
from lora_sam.cli import main

CHANGES = {"embed_dim=32": "embed_dim=40", "stages=[1,1,2,1]": "stages=[1,1,4,1]",
           "global_att_blocks=[3]": "global_att_blocks=[3,5]",
           "backbone_channel_list=[256,128,64,32]": "backbone_channel_list=[320,160,80,40]"}


def _changed(override: str) -> str:
    for old, new in CHANGES.items():
        override = override.replace(old, new)
    return override


if __name__ == "__main__":
    sc.MINI_OVERRIDES = tuple(_changed(o) for o in sc.MINI_OVERRIDES)
    sys.argv = ["lora-sam", "pretrain", "runs/pretrain_sam2/tinylike", "--data", "runs/pretrain_sam2/data",
                "--model-type", "sam2.1_mini", "--sizes", "224x224", "--size-weights", "1", "--steps", "2600",
                "--save-every-s", "240"]
    main()
