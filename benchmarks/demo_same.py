"""Whether two ``lora-sam demo`` run folders hold the same numbers: every value of demo.json, compare.json,
eval.json and source/eval.json (times, memory, sizes, devices and file paths left out) and both training curves
(lora/ and full/ metrics.csv), digit for digit. Used to check that a restructuring changed no result.

    git worktree add /tmp/before <commit before>      # then, from each tree's environment:
    lora-sam demo --out /tmp/demo_before                (in /tmp/before, PYTHONPATH=/tmp/before/src)
    lora-sam demo --out /tmp/demo_after
    python benchmarks/demo_same.py /tmp/demo_before /tmp/demo_after
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

RECORDS = ("demo.json", "compare.json", "eval.json", "source/eval.json")
CURVES = ("lora/metrics.csv", "full/metrics.csv")
# keys whose values depend on the machine, its load or the folder, not on what was computed
MACHINE = ("time", "seconds", "memory", "bytes", "_file", "checkpoint", "data", "eval_json", "metrics_csv",
           "report", "device", "threads", "init", "peak", "path")
# the demo's own record of its settings: its layout changed when DemoConfig took the settings groups; what the
# runs used is compare.json's settings (compared, its "config" included)
LAYOUT = ("demo.json/config",)


def differences(a: Any, b: Any, where: str) -> list[str]:
    """Every place where ``a`` and ``b`` differ, keys of ``MACHINE`` left out."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            if any(word in str(key) for word in MACHINE) or f"{where}/{key}" in LAYOUT:
                continue
            if key not in a or key not in b:
                out.append(f"{where}/{key}: in one folder only")
            else:
                out += differences(a[key], b[key], f"{where}/{key}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} vs {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} vs {b!r}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path, help="one demo run folder")
    parser.add_argument("after", type=Path, help="the other")
    args = parser.parse_args(argv)
    found = []
    for name in RECORDS:
        found += differences(json.loads((args.before / name).read_text()),
                             json.loads((args.after / name).read_text()), name)
    for name in CURVES:
        if (args.before / name).read_text() != (args.after / name).read_text():
            found.append(f"{name}: the training curves differ")
    for line in found:
        print(line)
    print(f"{len(found)} differences in {len(RECORDS)} records and {len(CURVES)} training curves")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
