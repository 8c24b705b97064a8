"""The layout rules of docs/architecture.md: sizes of files and functions (src/ and benchmarks/), and the\nimport contracts."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "lora_sam"
PYPROJECT = SRC.parents[1] / "pyproject.toml"
MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 60


BENCHMARKS = SRC.parents[1] / "benchmarks"


def _sources() -> list[Path]:
    """The package's modules and the benchmarks' (the same size rules for both)."""
    return sorted(SRC.rglob("*.py")) + sorted(BENCHMARKS.rglob("*.py"))


def _name(path: Path) -> str:
    return str(path.relative_to(SRC.parents[1]))


def test_every_source_file_is_at_most_400_lines() -> None:
    long = {_name(p): n for p in _sources() if (n := p.read_text().count("\n")) > MAX_FILE_LINES}
    assert not long, f"files over {MAX_FILE_LINES} lines (split them by concept): {long}"


def test_every_function_is_at_most_60_lines_or_says_why() -> None:
    long = []
    for path in _sources():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                says_why = "# long:" in lines[node.lineno - 1] or "# long:" in lines[node.lineno - 2]
                if size > MAX_FUNCTION_LINES and not says_why:
                    long.append(f"{_name(path)}:{node.lineno} {node.name} ({size} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines without a '# long: why' comment: {long}"


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([exe, str(PYPROJECT), "--no-cache"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120)


def test_import_contracts_hold_and_catch_an_upward_import(tmp_path: Path) -> None:
    clean = _lint_imports(SRC.parent)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    broken_root = tmp_path / "src"
    shutil.copytree(SRC, broken_root / "lora_sam", ignore=shutil.ignore_patterns("__pycache__"))
    targets = broken_root / "lora_sam" / "training" / "targets.py"  # training must not import the report
    targets.write_text(targets.read_text() + "\nfrom lora_sam.report import build  # noqa: E402,F401\n")
    broken = _lint_imports(broken_root)
    assert broken.returncode != 0
    assert "BROKEN" in broken.stdout and "lora_sam.training.targets -> lora_sam.report.build" in broken.stdout
