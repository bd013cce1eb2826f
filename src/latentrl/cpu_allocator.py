"""glibc's malloc tuned for large, short-lived CPU tensors (the (B, V) logits and sampling temporaries of a decode
step at real vocabularies).

By default glibc serves a block above its mmap threshold (128 KiB at first, raised by each free up to 32 MiB) with a
fresh `mmap`, and returns freed memory at the top of its heap to the system above its trim threshold. A decode step
at V = 151,936 allocates and frees several 19 MB (B = 32) tensors: depending on where that threshold has drifted,
each one is mapped, page-faulted in and unmapped again every step. Measured on the rollout benchmark (one thread,
`docs/benchmarks.md`, "The allocator"): Latent-GRPO's and LEPO's steps swung between ~26-35 ms and ~50-62 ms from
run to run of the same code, HF `generate` between ~153 and ~175 ms; with the thresholds fixed below they stay at the
fast end. `tune_glibc_malloc` serves blocks up to 32 MiB from the heap and keeps up to 1 GiB of freed memory there
for reuse (so a process's resident memory stays near its peak instead of falling back). It is what the
`MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_` variables, or a preloaded jemalloc / tcmalloc as Intel
recommends for PyTorch on CPUs, would do. The `latentrl` command and the benchmarks call it at start;
`LATENTRL_MALLOC_TUNING=0` leaves malloc as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 1 << 30


def tune_glibc_malloc() -> bool:
    """Set glibc's mmap and trim thresholds (see the module docstring); True if they were set. A no-op (False)
    elsewhere than Linux with glibc, or with LATENTRL_MALLOC_TUNING=0."""
    if os.environ.get("LATENTRL_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
