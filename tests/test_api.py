"""The public API: the 17 names of ``lora_sam.__init__``, lazily imported and visible to type checkers."""

from __future__ import annotations

import ast
import inspect

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
