"""Machine probes of the benchmarks: a helper module of ``train_step.py`` and its siblings, not a script.

Process memory from ``/proc/self/status``, the CPU's name, the machine's CPU use from ``/proc/stat``, the
device sync, the measured float32 matmul rate, and waiting for a shared machine to go quiet.
"""

from __future__ import annotations

import platform
import sys
import time
from typing import Any


def proc_status(field: str) -> int:
    """A ``kB`` field of /proc/self/status, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    with open("/proc/stat") as f:
        values = [float(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)
    return sum(values) - idle, sum(values)


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: Any, size: int = 2048, repeats: int = 7, shape: tuple[int, int, int] | None = None) -> float:
    """Measured float32 matmul rate in GFLOP/s (best of ``repeats``: on a shared machine other
    processes only slow it down), ``(size,size)@(size,size)`` or ``shape = (m, k, n)``."""
    import torch

    m, k, n = shape or (size, size, size)
    a = torch.randn(m, k, device=device)
    b = torch.randn(k, n, device=device)
    inner = max(1, int(2e9 // (2 * m * k * n)))  # about 2 GFLOP per timing
    for _ in range(2):
        a @ b
    sync(device)
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(inner):
            a @ b
        sync(device)
        rates.append(2 * m * k * n * inner / (time.perf_counter() - t) / 1e9)
    return max(rates)


_IDLE_DEADLINE = 0.0  # await_quiet's budget ends here (time.monotonic()); set by idle_budget


def idle_budget(seconds: float) -> None:
    """From now on, ``await_quiet`` waits at most ``seconds`` in total (a worker's ``--wait-idle`` budget)."""
    global _IDLE_DEADLINE
    _IDLE_DEADLINE = time.monotonic() + seconds


def await_quiet() -> None:
    """In a worker: wait (within the ``--wait-idle`` budget) until other processes leave the cores idle."""
    if _IDLE_DEADLINE > time.monotonic():
        wait_idle(_IDLE_DEADLINE - time.monotonic(), window_s=2.0, quiet=True)


def wait_idle(limit_s: float, threshold: float = 0.15, window_s: float = 3.0, quiet: bool = False) -> float:
    """Wait (at most ``limit_s``) until the machine's CPU use over ``window_s`` is under ``threshold``;
    returns the last measured use (share of all cores)."""
    deadline = time.monotonic() + limit_s
    while True:
        busy0, total0 = cpu_busy()
        time.sleep(window_s)
        busy1, total1 = cpu_busy()
        use = (busy1 - busy0) / max(total1 - total0, 1)
        if use < threshold or time.monotonic() > deadline:
            return use
        if not quiet:
            print(f"  machine busy ({use:.0%} CPU), waiting ...", file=sys.stderr, flush=True)
        time.sleep(1 if quiet else 10)

