"""Adapter files as a user may hold them: written by ``save_adapter``, then relabelled by hand (an adapter whose
metadata names another model type or family than the network it was trained on)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, safe_open, save_file


def relabel_adapter(path: Path, **meta: Any) -> Path:
    """Rewrite some metadata fields of the adapter file at ``path`` in place (values as JSON, like
    ``save_adapter`` writes them); the tensors stay."""
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
    metadata.update({k: json.dumps(v) for k, v in meta.items()})
    save_file(load_file(str(path)), str(path), metadata=metadata)
    return path
