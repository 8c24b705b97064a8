"""The public API: the 17 names of ``lora_sam.__init__``, lazily imported and visible to type checkers; the old
module paths; the package layout."""

from __future__ import annotations

import ast
import inspect

import pytest

import lora_sam


def test_every_public_name_resolves_to_its_module() -> None:
    assert sorted(lora_sam.__all__) == sorted(lora_sam._EXPORTS)
    assert len(lora_sam.__all__) == 17
    for name, module in lora_sam._EXPORTS.items():
        value = getattr(lora_sam, name)
        assert value.__module__ == f"lora_sam.{module}", name


def test_type_checking_block_imports_exactly_the_public_names_from_their_modules() -> None:
    tree = ast.parse(inspect.getsource(lora_sam))
    block = next(node for node in tree.body if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING")
    imported = {alias.name: node.module for node in block.body if isinstance(node, ast.ImportFrom)
                for alias in node.names}
    assert imported == {name: f"lora_sam.{module}" for name, module in lora_sam._EXPORTS.items()}


# Every import path the README showed before the package was laid out by concept (and every module that moved):
# each still imports, warns that it moved, and gives the very objects of its new home.
OLD_PATHS = {
    "lora_sam.lora": ("LoRAOptions", "lora_sam.lora.options"),
    "lora_sam.recipe": ("RecipeOptions", "lora_sam.training.recipe"),
    "lora_sam.module": ("LoRASAM", "lora_sam.training.module"),
    "lora_sam.model": ("build_sam", "lora_sam.models.sam_v1.model"),
    "lora_sam.sam2_model": ("Sam2Image", "lora_sam.models.sam2_1.model"),
    "lora_sam.sam2_config": ("MINI_OVERRIDES", "lora_sam.models.sam2_1.config"),
    "lora_sam.families": ("family_of", "lora_sam.models.families"),
    "lora_sam.promptable": ("PromptableModel", "lora_sam.models.promptable"),
    "lora_sam.checkpoints": ("WEIGHTS_DIR", "lora_sam.models.checkpoints"),
    "lora_sam.adapter": ("save_adapter", "lora_sam.lora.adapter"),
    "lora_sam.targets": ("point_sample", "lora_sam.training.targets"),
    "lora_sam.losses": ("sam_loss", "lora_sam.training.losses"),
}


@pytest.mark.slow
def test_the_old_import_paths_still_import_the_same_objects() -> None:
    """In a fresh interpreter (so that no test has imported them before): each old path imports, warns once
    that it moved (but ``lora_sam.lora``, a package of its own now), and its name is the new module's object."""
    import subprocess
    import sys

    lines = ["import warnings", "warnings.simplefilter('always')", "import lora_sam"]
    for n, (old, (name, new)) in enumerate(OLD_PATHS.items()):
        lines += [f"from {old} import {name} as old{n}", f"from {new} import {name} as new{n}",
                  f"assert old{n} is new{n}, {old!r}"]
    lines.append("from lora_sam.models.sam_v1.presets import SAM_LAYERS; assert lora_sam.lora.SAM_LAYERS is SAM_LAYERS")
    done = subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    warned = {line.split(" moved to ")[0].rsplit(" ", 1)[-1] for line in done.stderr.splitlines() if " moved to " in line}
    assert warned == set(OLD_PATHS) - {"lora_sam.lora"}


def test_the_root_holds_only_the_concepts() -> None:
    """The tree shows the families, LoRA and training: the package root keeps the command line, its error
    contract, the settings helpers and io beside one sub-package per concept."""
    from pathlib import Path

    root = Path(lora_sam.__file__).parent
    modules = {p.stem for p in root.glob("*.py")}
    packages = {p.name for p in root.iterdir() if (p / "__init__.py").is_file()}
    assert modules == {"__init__", "_moved", "cli", "errors", "io", "settings"}
    assert packages == {"models", "lora", "training", "data", "evaluation", "report", "runs", "app"}
    assert {p.name for p in (root / "models").iterdir() if (p / "__init__.py").is_file()} == {"sam_v1", "sam2_1"}


def _documented_paths() -> set[str]:
    """Every ``lora_sam...`` dotted path and ``from lora_sam... import a, b`` the README and the docs name."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    pages = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    found: set[str] = set()
    for page in pages:
        text = page.read_text()
        for module, names in re.findall(r"from (lora_sam[\w.]*) import ([\w, ]+)", text):
            found |= {f"{module}.{n.strip()}" for n in names.split(",") if n.strip()}
        found |= {m.rstrip(".") for m in re.findall(r"(?<![\w/])(lora_sam(?:\.\w+)+)", text)}
    return found


def test_every_path_the_readme_and_docs_name_resolves() -> None:
    """Each dotted path of the README and the documentation site imports: a module, or a name in one."""
    import importlib

    paths = _documented_paths()
    assert "lora_sam.training.recipe.RecipeOptions" in paths and len(paths) > 30
    missing = []
    for path in sorted(paths):
        parts = path.split(".")
        for cut in range(len(parts), 0, -1):  # the longest prefix that is a module, then attributes
            try:
                value = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            try:
                for name in parts[cut:]:
                    value = getattr(value, name)
            except AttributeError:
                missing.append(path)
            break
        else:
            missing.append(path)
    assert not missing, f"paths named in the README or docs that do not resolve: {missing}"
