# Resumes the tiny-shaped Hiera run (README, "A Hiera shaped like v1's tiny"): python benchmarks/results/sam2_pretrain/mini_tinylike.py
import sys
import lora_sam.sam2_config as sc
sc.MINI_OVERRIDES = tuple(o.replace("embed_dim=32", "embed_dim=40").replace("stages=[1,1,2,1]", "stages=[1,1,4,1]")
    .replace("global_att_blocks=[3]", "global_att_blocks=[3,5]").replace("backbone_channel_list=[256,128,64,32]", "backbone_channel_list=[320,160,80,40]")
    for o in sc.MINI_OVERRIDES)
from lora_sam.cli import main
sys.argv = ["lora-sam", "pretrain", "runs/pretrain_sam2/tinylike", "--data", "runs/pretrain_sam2/data", "--model-type", "sam2.1_mini",
            "--sizes", "224x224", "--size-weights", "1", "--steps", "2600", "--save-every-s", "240"]
main()
