"""lora_sam.io: atomic writes, byte sizes, Markdown tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_sam.io import atomic_path, format_bytes, markdown_table


def test_format_bytes() -> None:
    assert format_bytes(None) == "n/a"
    assert format_bytes(512) == "512 B"
    assert format_bytes(10 * 1024) == "10.0 KB"
    assert format_bytes(1.5 * 2**20) == "1.5 MB"
    assert format_bytes(3 * 2**40) == "3072.0 GB"
    assert format_bytes(-(2**20)) == "-1.0 MB"


def test_markdown_table_aligns_and_escapes() -> None:
    lines = markdown_table(["model", "kind", "n"], [["a|b", "lora", 3]], "llr").splitlines()
    assert lines == ["| model | kind | n |", "|---|---|---:|", "| a\\|b | lora | 3 |"]
    assert markdown_table(["x", "y"], []).splitlines()[1] == "|---|---:|"  # default: left, then right
    with pytest.raises(ValueError):
        markdown_table(["x", "y"], [], "l")


def test_atomic_path_leaves_the_old_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file.json"
    with atomic_path(target) as partial:
        partial.write_text("new")
    assert target.read_text() == "new"
    with pytest.raises(RuntimeError), atomic_path(target) as partial:
        partial.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "new" and sorted(p.name for p in target.parent.iterdir()) == ["file.json"]
