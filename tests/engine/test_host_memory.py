"""keep_freed_memory: a CPU step's large buffers (the logits: rows x 50,257 floats) come from the
heap and stay there when freed, instead of a fresh mmap every step that the kernel zeroes and
faults in again. Checked in a fresh process with glibc's own accounting (mallinfo2)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)

PROBE = """
import ctypes, sys, torch
from app.engine.worker.host_memory import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "tuned":
    assert keep_freed_memory()
logits = torch.empty(256, 50257)  # a 256-row step's logits, 51 MB
logits.fill_(1.0)
mapped = libc.mallinfo2().hblkhd  # bytes in chunks glibc got from mmap
del logits
kept = libc.mallinfo2().fordblks  # free bytes kept in the heap
print(mapped, kept)
"""


def _probe(mode: str) -> tuple[int, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    ).stdout
    mapped, kept = out.split()
    return int(mapped), int(kept)


def test_step_sized_buffers_stay_in_the_heap() -> None:
    size = 256 * 50257 * 4
    mapped, kept = _probe("default")
    assert mapped >= size  # glibc's default: its own mmap, unmapped again on free
    mapped, kept = _probe("tuned")
    assert mapped < size and kept >= size
