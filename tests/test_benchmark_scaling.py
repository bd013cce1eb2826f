"""benchmarks/scaling.py: one shape measured in-process (rollout and update both run, work counted right) and the
faster-than-linear flag on hand-made rows. No timing is asserted."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import scaling  # noqa: E402


def test_one_shape_runs_rollout_and_update():
    args = scaling.parse_args(["--repeats", "1", "--prompt-len", "4", "--worker", "soft_mixture", "3", "5"])
    row = scaling.worker(args)
    assert (row["mode"], row["batch"], row["new"]) == ("soft_mixture", 3, 5)
    assert row["positions_per_s"] == 3 * 5 / row["rollout_s"] > 0
    assert row["update_tokens_per_s"] == 3 * 5 / row["update_s"] > 0  # every position is a completion token
    assert row["peak_mb"] >= row["base_mb"] > 0


def test_flags_only_cost_per_position_that_grows_past_the_ratio():
    rows = [dict(batch=8, new=64, rollout_s=1.0, update_s=1.0),
            dict(batch=16, new=64, rollout_s=2.0, update_s=3.0),   # rollout linear, update 1.5x per position
            dict(batch=32, new=64, rollout_s=3.0, update_s=6.0)]   # rollout sublinear, update linear
    scaling.flag_superlinear(rows, ratio=1.3)
    assert "flags" not in rows[0]
    assert rows[1]["flags"] == ["update cost per position x1.50"] and rows[1]["rollout_s_growth"] == 1.0
    assert "flags" not in rows[2] and rows[2]["rollout_s_growth"] == 0.75
