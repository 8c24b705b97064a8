"""The module paths before the package was laid out by concept (``lora_sam.model``, ``lora_sam.recipe``, ...):
importing one still works, with a ``DeprecationWarning`` naming the new path, and gives a module whose names
are the new module's (the same objects)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

MOVED: dict[str, str] = {
    "promptable": "models.promptable",
    "families": "models.families",
    "checkpoints": "models.checkpoints",
    "attention": "models.attention",
    "model": "models.sam_v1.model",
    "vit_encoder": "models.sam_v1.encoder",
    "sizes": "models.sam_v1.sizes",
    "deploy": "models.sam_v1.deploy",
    "sam2_model": "models.sam2_1.model",
    "sam2_config": "models.sam2_1.config",
    "adapter": "lora.adapter",
    "summary": "lora.summary",
    "targets": "training.targets",
    "prompts": "training.prompts",
    "losses": "training.losses",
    "metrics": "training.metrics",
    "decoder_side": "training.decoder_side",
    "recipe": "training.recipe",
    "module": "training.module",
}
"""Old module name (under ``lora_sam``) -> its new path (under ``lora_sam``)."""


class _Forward(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        target = importlib.import_module(self.new)
        module = types.ModuleType(spec.name, target.__doc__)

        def __getattr__(name: str) -> object:  # noqa: N807 (a module's __getattr__, PEP 562)
            return getattr(target, name)

        module.__getattr__ = __getattr__  # type: ignore[method-assign]
        module.__all__ = list(getattr(target, "__all__", [n for n in vars(target) if not n.startswith("_")]))
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


class _OldPaths(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != "lora_sam" or name not in MOVED:
            return None
        new = f"lora_sam.{MOVED[name]}"
        warnings.warn(f"{fullname} moved to {new}; import it from there", DeprecationWarning, stacklevel=2)
        return importlib.machinery.ModuleSpec(fullname, _Forward(new))


def install() -> None:
    """Let the old module paths import (once per process)."""
    if not any(isinstance(finder, _OldPaths) for finder in sys.meta_path):
        sys.meta_path.append(_OldPaths())
