"""`allocator.keep_freed_memory`: freed blocks stay in the heap instead of page-faulting back at the next step."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only"
)

# Blocks of 1, 2, ... 31 MiB, each written and freed: glibc maps each one afresh (its adaptive mmap threshold is the
# largest block freed so far), page by page; with the thresholds pinned the heap grows once and keeps them.
CHURN = """
import ctypes, ctypes.util, resource, sys
from finecaption_plugin.allocator import keep_freed_memory
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
applied = keep_freed_memory() if sys.argv[1] == "pin" else None
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for mib in range(1, 32):
    block = libc.malloc(mib << 20)
    ctypes.memset(block, 1, mib << 20)
    libc.free(block)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _churn(mode: str, **env: str) -> tuple[str, int]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    result = subprocess.run(
        [sys.executable, "-c", CHURN, mode], env={**environment, **env}, capture_output=True, text=True, check=True
    )
    applied, faults = result.stdout.split()
    return applied, int(faults)


def test_pinned_thresholds_stop_the_page_faults():
    applied, pinned = _churn("pin")
    _, default = _churn("default")
    assert applied == "True"
    assert pinned * 10 < default, (pinned, default)


def test_the_users_own_malloc_settings_win():
    assert _churn("pin", MALLOC_TRIM_THRESHOLD_="131072")[0] == "False"
    assert _churn("pin", GLIBC_TUNABLES="glibc.malloc.mmap_threshold=65536")[0] == "False"
