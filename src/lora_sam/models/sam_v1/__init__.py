"""The SAM v1 family: Meta's ``segment_anything`` classes (the only importer of that package).

- ``model``: ``build_sam`` at any training size, ``SamV1`` (its ``PromptableModel``), ``SamV1Predictor``.
- ``encoder``: the ViT image encoder at run time (``ResolutionSwitch``, fused attention, checkpointing).
- ``decoder``: the mask decoder computed faster with the official modules (``use_fast_decoder``, on by default).
- ``tiny_vit``: the TinyViT image encoder of MobileSAM and LiteMedSAM (this package's own, their key names).
- ``lite_medsam``: LiteMedSAM's own 256 px pipeline (an ``ImagePredictor``) and its per-image min-max pixels.
- ``sizes``: the model types' dims, the 1024 px frame, ``detect_model_type``.
- ``presets``: the LoRA layer presets (the family's, and LiteMedSAM's own).
- ``deploy``: the official ONNX export and automatic mask generator on a merged model.
"""
