"""Training: SAM's interactive recipe as plain functions, and the LightningModule that runs it.

- ``targets``: ``point_sample`` / ``box_sample``, which ground-truth masks a prompt means.
- ``prompts``: prompt simulation (first points, noisy boxes, error-region points, evaluation clicks).
- ``losses``: focal, dice, SAM's loss, output-to-target assignment; ``metrics``: mIoU@k, NoC, ``mask_iou``.
- ``decoder_side``: one round's decode, upscale, pairing and loss (eager, or static-K for ``torch.compile``).
- ``recipe``: ``RecipeOptions`` and the interactive training step over a ``PromptableModel``.
- ``options``: ``OptimOptions`` and ``ComputeOptions``; ``module``: ``LoRASAM``.
"""
