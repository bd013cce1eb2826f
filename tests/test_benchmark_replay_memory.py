"""benchmarks/replay_memory.py: both replay paths run at a tiny shape, one fresh process each, and are reported side
by side. No timing or memory figure is asserted beyond being measured."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import replay_memory  # noqa: E402


def test_both_paths_run_in_their_own_processes_and_are_reported():
    out = replay_memory.main(["--vocab-size", "64", "--shapes", "3x5", "--repeats", "1", "--prompt-len", "4"])
    assert [(r["path"], r["batch"], r["completion"]) for r in out["rows"]] == [("buffers", 3, 5), ("autograd", 3, 5)]
    assert all(r["wall_s"] > 0 and r["peak_mb"] > 0 for r in out["rows"])
