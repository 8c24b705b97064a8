"""Process-wide settings of the ``lora-sam`` commands: how memory is handed out on Linux.

On the CPU a SAM decoder call allocates tensors of tens to hundreds of MB (the image embedding repeated per prompt:
K x 64 x 64 x 256 floats). glibc serves every allocation above its mmap threshold (at most 32 MB) with a fresh
``mmap`` and returns it on ``free``, so each such tensor costs a page fault per 4 KB page, the kernel zeroing it
again: measured on the real-nuclei demo's evaluation, 8 million page faults and 16 of its 43 CPU-seconds
(``BENCHMARKS.md``, "Memory allocator"). ``tune_allocator`` does two things:

- tells glibc to keep freed memory and serve large blocks from its heap (``mallopt``: no mmap'd blocks, trim only
  above 1 GiB), so pages are reused;
- asks PyTorch's CPU allocator for transparent huge pages on large tensors (``THP_MEM_ALLOC_ENABLE=1``, unless the
  variable is set already; read by PyTorch at its first allocation, so it takes effect when called before torch
  allocates, as the command line does), so a fresh block faults once per 2 MB instead of once per 4 KB.

Peak memory is unchanged (the same tensors live at once); memory freed after the peak stays with the process until
it exits. The ``lora-sam`` command line calls it at start (and so do the training processes ``compare`` starts); a
Python program using the library can call it once itself, before its first tensor. ``LORA_SAM_MALLOC=system``
keeps both defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["MALLOC_ENV", "tune_allocator"]

MALLOC_ENV = "LORA_SAM_MALLOC"
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
_TRIM_THRESHOLD = 1 << 30
_done: bool | None = None


def tune_allocator() -> bool:
    """Keep large freed blocks for reuse and ask for huge pages (glibc on Linux); True when applied. Idempotent; a no-op elsewhere, with
    another C library, or when ``$LORA_SAM_MALLOC`` is ``system``."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if not sys.platform.startswith("linux") or os.environ.get(MALLOC_ENV, "").lower() == "system":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _done = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    if _done:
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # inherited by child processes too
    return _done
