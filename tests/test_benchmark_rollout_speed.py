"""benchmarks/rollout_speed.py: memory samples from several fresh processes are summarised as the highest peak (the
`*_peak_mb` keys) and their median, every sample kept in the JSON. No timing is asserted."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import rollout_speed  # noqa: E402


def sample(peak: float) -> dict:
    return {"rss_before_mb": 500.0, "peak_mb": peak, "maxrss_mb": peak + 1, "threads": 1}


def test_memory_rounds_report_the_highest_and_the_median_peak(capsys):
    args = rollout_speed.parse_args(["--batch", "4", "--new", "8", "--memory-rounds", "3"])
    times = {"generate": [(2.0, 2.0), (2.2, 2.1)], "soft_mixture": [(1.0, 1.0), (1.2, 1.1)]}
    mem = {"generate": [sample(p) for p in (700.0, 650.0, 690.0)],
           "soft_mixture": [sample(p) for p in (680.0, 800.0, 660.0)]}
    rows = rollout_speed.summarize(args, times, mem)
    assert rows["soft_mixture"]["peak_mb"] == 800.0 and rows["soft_mixture"]["peak_mb_median"] == 680.0
    out = rollout_speed.final_json(args, rows, [0.0, 0.0])
    assert out["latent_peak_mb"] == 800.0 and out["generate_peak_mb"] == 700.0
    assert out["peak_mb_median"] == {"generate": 690.0, "soft_mixture": 680.0}
    assert out["peak_mb_samples"]["soft_mixture"] == [680.0, 800.0, 660.0]
    assert out["vs_generate"]["soft_mixture"] == pytest.approx(2.1 / 1.1, abs=1e-3)
    rollout_speed.print_table(args, rows, [0.0, 0.0])
    assert "med of 3" in capsys.readouterr().out


def test_memory_rounds_must_be_positive():
    with pytest.raises(SystemExit):
        rollout_speed.parse_args(["--memory-rounds", "0"])
