"""Running a piece of code in a subprocess with bounded memory and time (tests of hostile inputs).

``run_bounded(setup, body)``: ``setup`` runs first (imports, building the input); then the address space is
limited to what the process holds plus ``extra_mb`` (``RLIMIT_AS``), and ``body`` runs under ``timeout`` seconds.
A decoder that allocates what a hostile header or RLE size asks for fails (MemoryError, or a crash) instead of
taking the machine; one that checks sizes first prints its error and exits 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

PRELUDE = """
import resource


def _address_space() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * resource.getpagesize()
"""


def run_bounded(setup: str, body: str, extra_mb: int = 64, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``setup`` then ``body`` (Python source) in a fresh interpreter, ``body`` with at most ``extra_mb`` MiB
    more address space than after ``setup``; returns the finished process (raises on timeout)."""
    code = "\n".join(
        [
            PRELUDE,
            textwrap.dedent(setup),
            f"_limit = _address_space() + {extra_mb} * 2**20",
            "resource.setrlimit(resource.RLIMIT_AS, (_limit, _limit))",
            textwrap.dedent(body),
        ]
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)


def png_header_only(width: int, height: int, bit_depth: int = 8, color_type: int = 0) -> bytes:
    """A PNG whose header says ``width x height`` but whose data holds one row: a decompression bomb as a decoder
    that trusts the header sees it (the canvas is allocated before the data runs out)."""
    import struct
    import zlib

    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    row = b"\x00" + bytes(width * channels * bit_depth // 8)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row)) + chunk(b"IEND", b"")


def png_16bit(array) -> bytes:
    """A 16-bit PNG of ``array`` (uint16, [H, W] grey or [H, W, 3] RGB), written by hand (Pillow writes 16-bit
    grey only)."""
    import struct
    import zlib

    import numpy as np

    array = np.asarray(array, dtype=">u2")
    height, width = array.shape[:2]
    color_type = 0 if array.ndim == 2 else 2
    raw = b"".join(b"\x00" + array[y].tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
