"""The SAM 2.1 family: Meta's ``sam2`` package (optional extra ``[sam2]``; the only importer of it).

- ``config``: the model types as data (Meta's configs, ``sam2.1_mini``'s overrides, square sides, LoRA presets).
- ``model``: the builder, ``Sam2Image`` (its ``PromptableModel``), ``Sam2Predictor`` over ``SAM2ImagePredictor``.

(Not named ``sam2``: that is Meta's package.)
"""
