"""benchmarks/trainer_vs_trl.py's agreement check: our GRPO loss and gradients equal TRL's on identical rollouts.

Reference = TRL's own `GRPOTrainer.compute_loss` on a batch TRL generated itself (not timed; skipped without trl).
"""

import importlib.util
import warnings
from pathlib import Path

import pytest

pytest.importorskip("trl")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "trainer_vs_trl.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("trainer_vs_trl", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_loss_and_grads_match_trl(tmp_path, beta):
    bench = load_bench()
    args = bench.parse_args(["--hidden", "32", "--layers", "1", "--batch", "8", "--num-generations", "4",
                             "--prompt-len", "6", "--completion-len", "8", "--beta", str(beta), "--threads", "1"])
    tok = bench.save_tiny_model(args, tmp_path / "model")
    rows = bench.make_rows(args, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check = bench.run_check(args, tmp_path / "model", tok, rows, tmp_path)

    per = check["per_loss_type"]
    assert set(per) == set(bench.LOSS_TYPES)
    for lt, v in per.items():
        assert v["abs_diff"] <= 1e-6 * max(1.0, abs(v["trl"])), (lt, v)
        assert v["grad_max_abs_diff"] <= 1e-5 * max(1e-3, v["grad_max_abs"]) + 1e-7, (lt, v)
        assert v["grad_max_abs"] > 0
    # the check is discriminative: the clip is active and rows of different lengths separate the aggregations
    assert check["clipped_fraction"] > 0.05
    assert abs(per["grpo"]["trl"] - per["dapo"]["trl"]) > 1e-4
    assert abs(per["dr_grpo"]["trl"] - per["dapo"]["trl"]) > 1e-4
    if beta > 0:
        assert check["ref_logprob_max_abs_diff"] < 1e-5
    else:
        assert "ref_logprob_max_abs_diff" not in check
