"""The models: the seam every other part reaches a network through, and one sub-package per model family.

- ``promptable``: the ``PromptableModel`` and ``ImagePredictor`` interfaces (the model seam).
- ``families``: model type -> family (builder, ``PromptableModel`` view, LoRA presets, frame, checkpoint format).
- ``checkpoints``: where weights come from (official files, the built-in bases) and the training size.
- ``attention``: fused attention with decomposed relative positions, activation checkpointing (both families).
- ``sam_v1``: SAM v1 (``segment_anything``): the builder, its ViT encoder at run time, sizes, LoRA presets,
  ONNX and automatic masks.
- ``sam2_1``: SAM 2.1's image models (Meta's optional ``sam2`` package): the builder and its config as data.

Nothing is imported here, so ``lora_sam.models.checkpoints`` stays light (the data layer uses it).
"""
