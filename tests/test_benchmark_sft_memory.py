"""benchmarks/sft_memory.py: both SFT loss paths run at a tiny shape, one fresh process each, reported side by side,
with the same loss. No timing or memory figure is asserted beyond being measured."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import sft_memory  # noqa: E402


def test_both_paths_run_in_their_own_processes_and_give_the_same_loss():
    out = sft_memory.main(["--vocab-size", "64", "--shapes", "3x8", "--repeats", "1"])
    assert [(r["path"], r["batch"], r["seq"]) for r in out["rows"]] == [("chunked", 3, 8), ("logits", 3, 8)]
    assert all(r["wall_s"] > 0 and r["peak_mb"] > 0 for r in out["rows"])
    assert out["rows"][0]["loss"] == pytest.approx(out["rows"][1]["loss"], rel=1e-5)
