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


def compare_paths(script: str, base: list[str], shapes: list[str], paths: tuple[str, ...], baseline: str,
                  extra: tuple[str, ...] = ()) -> list[dict]:
    """Each path at each `AxB` shape in a fresh process (`script [base] --worker PATH A B`), printed side by side with
    its speed and memory ratios against `baseline` (baseline / path), plus the result keys in `extra`; returns the
    worker results in order."""
    rows = []
    print(f"{'shape':>8} {'path':>9} " + "".join(f"{k:>8} " for k in extra)
          + f"{'s/step':>8} {'user s':>7} {'sys s':>6} {'peak MB':>8} {'speed':>7} {'memory':>7}")
    for shape in shapes:
        a, b = shape.split("x")
        got = {path: in_fresh_process(script, [*base, "--worker", path, a, b]) for path in paths}
        for path in paths:
            r = got[path]
            speed, memory = got[baseline]["wall_s"] / r["wall_s"], got[baseline]["peak_mb"] / r["peak_mb"]
            print(f"{shape:>8} {path:>9} " + "".join(f"{r[k]:>8.4f} " for k in extra)
                  + f"{r['wall_s']:>8.2f} {r['user_s']:>7.2f} {r['sys_s']:>6.2f} {r['peak_mb']:>8.0f} "
                  f"{speed:>6.2f}x {memory:>6.2f}x")
            rows.append(r)
    return rows
