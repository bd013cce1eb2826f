"""What the side-by-side memory benchmarks (`replay_memory.py`, `sft_memory.py`) share: each path and shape runs in
a fresh process (so its peak resident memory is its own), one warm-up call, then the fastest of N timed calls with
their user and system CPU time and the resident high-water mark over the timed calls."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rollout_speed import peak_rss_mb, reset_peak_rss  # noqa: E402


def fastest(step: Callable[[], object], repeats: int) -> dict:
    """Warm up with one `step()`, then time `repeats` more: the fastest one's wall, user and system seconds, and the
    peak resident MB over them all."""
    step()
    reset_peak_rss()
    best = None
    for _ in range(repeats):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        step()
        wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
        run = {"wall_s": wall, "user_s": r1.ru_utime - r0.ru_utime, "sys_s": r1.ru_stime - r0.ru_stime}
        best = run if best is None or wall < best["wall_s"] else best
    return {**best, "peak_mb": peak_rss_mb()}


def in_fresh_process(script: str, args: list[str]) -> dict:
    """Run `script args` in a new interpreter; its last stdout line is the JSON result."""
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])
