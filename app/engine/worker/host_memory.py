"""Keep large freed buffers in the process instead of handing them back to the OS every step.

A CPU step allocates and frees the same large tensors every time: the logits alone are rows x
50,257 floats (51 MB at 256 rows). glibc serves allocations above its mmap threshold (dynamic,
at most 32 MiB) with a fresh mmap and returns them with munmap when freed, and trims the heap's
free top above its trim threshold; either way the next step pays the kernel to zero and map the
same pages again, one page fault per 4 KiB. Measured with `python -m benchmarks.worker_host
--rows 256` (tiny model, so the logits dominate): the forward pass took 2x the CPU (90 against
45 µs a row) and freeing the step's tensors 15 µs a row more, against the same run with these
settings.

Raising both thresholds above any per-step buffer keeps that memory in the heap for reuse. The
cost is memory: up to TRIM_THRESHOLD of freed heap can stay resident. Model weights and the KV
cache are allocated once and are larger than MMAP_THRESHOLD, so they are unaffected. Only glibc
has these knobs; elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 2**20  # larger than a 256-row step's logits (51 MB)
TRIM_THRESHOLD = 256 * 2**20


def keep_freed_memory() -> bool:
    """Apply the thresholds to this process; True if the C library took them."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    log.debug("malloc thresholds for reused step buffers: %s", "set" if ok else "refused")
    return ok
