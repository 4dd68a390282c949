"""Keeps glibc's malloc from handing freed tensor memory back to the OS between CPU training steps.

glibc serves a block above its mmap threshold with its own `mmap` and unmaps it on `free`, and trims the top of the
heap past its trim threshold. Both thresholds adapt to the sizes freed, but a training step allocates activations of
many sizes from several threads, so on a CPU each step page-faults much of its memory back in, zero-filled: about
20,000 minor page faults in every tower pretraining step of the demo model, which take 8% of the step
(benchmarks/README.md, item 18). Pinning the thresholds high, what the `MALLOC_MMAP_THRESHOLD_` and
`MALLOC_TRIM_THRESHOLD_` environment variables do for a whole process (glibc's manual, "Memory Allocation
Tunables"), leaves freed blocks in the heap for the next step; peak memory stayed the same.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest (HEAP_MAX_SIZE / 2 on 64-bit); bigger blocks are always mapped
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_memory() -> bool:
    """Pin glibc's mmap and trim thresholds for this process; True when done. Nothing happens off glibc, or where
    the user tuned malloc already (either variable above, or `glibc.malloc` in `GLIBC_TUNABLES`)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in USER_SETTINGS) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    done = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    logger.debug("malloc thresholds pinned: %s", done)
    return done
