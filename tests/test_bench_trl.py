"""benchmarks/trainer_vs_trl.py's agreement check: our GRPO loss and gradients equal TRL's on identical rollouts.

Reference = TRL's own `GRPOTrainer.compute_loss` on a batch TRL generated itself (not timed; skipped without trl).
"""

import importlib.util
import math
import os
import sys
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "trainer_vs_trl.py"
TINY = ["--hidden", "32", "--layers", "1", "--batch", "8", "--num-generations", "4", "--prompt-len", "6",
        "--completion-len", "8", "--threads", "1"]


def assert_agree(per_loss_type: dict, loss_rtol: float = 1e-6, grad_rtol: float = 1e-5, grad_atol: float = 1e-7):
    """Losses within loss_rtol (relative to max(1, |loss|)), gradients within grad_rtol of the largest gradient."""
    for lt, v in per_loss_type.items():
        assert v["abs_diff"] <= loss_rtol * max(1.0, abs(v["trl"])), (lt, v)
        assert v["grad_max_abs_diff"] <= grad_rtol * max(1e-3, v["grad_max_abs"]) + grad_atol, (lt, v)


def load_bench():
    if str(BENCH.parent) not in sys.path:  # its sibling modules (flops, model_presets), as when run as a script
        sys.path.insert(0, str(BENCH.parent))
    spec = importlib.util.spec_from_file_location("trainer_vs_trl", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def fresh_accelerate(monkeypatch):
    """The benchmark sets ACCELERATE_USE_CPU (its --device) and may leave a bf16 accelerate state: both are undone
    after the test."""
    from accelerate.state import AcceleratorState

    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    yield
    AcceleratorState._reset_state(True)


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_loss_and_grads_match_trl(tmp_path, beta, fresh_accelerate):
    bench = load_bench()
    args = bench.parse_args([*TINY, "--beta", str(beta)])
    tok = bench.save_tiny_model(args, tmp_path / "model")
    rows = bench.make_rows(args, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check = bench.run_check(args, tmp_path / "model", tok, rows, tmp_path)

    per = check["per_loss_type"]
    assert set(per) == set(bench.LOSS_TYPES)
    assert_agree(per)
    assert all(v["grad_max_abs"] > 0 for v in per.values())
    # the check is discriminative: the clip is active and rows of different lengths separate the aggregations
    assert check["clipped_fraction"] > 0.05
    assert abs(per["grpo"]["trl"] - per["dapo"]["trl"]) > 1e-4
    assert abs(per["dr_grpo"]["trl"] - per["dapo"]["trl"]) > 1e-4
    if beta > 0:
        assert check["ref_logprob_max_abs_diff"] < 1e-5
    else:
        assert "ref_logprob_max_abs_diff" not in check
    assert not check["synthetic_advantages"]  # the digit reward varies within groups at this vocab


def test_large_vocab_check_uses_seeded_advantages(tmp_path, fresh_accelerate):
    """With a large vocab no completion holds a digit, every advantage is 0 and the check would compare zeros:
    seeded random advantages (the same tensor for both trainers) keep it discriminative."""
    bench = load_bench()
    args = bench.parse_args([*TINY, "--vocab-size", "20000"])
    tok = bench.save_tiny_model(args, tmp_path / "model")
    assert len(tok) == 20000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check = bench.run_check(args, tmp_path / "model", tok, bench.make_rows(args, 8), tmp_path)
    assert check["synthetic_advantages"]
    assert all(v["grad_max_abs"] > 1e-3 for v in check["per_loss_type"].values())
    assert_agree(check["per_loss_type"])


UPDATE_KEYS = ("trl_s_per_step", "ours_s_per_step", "speedup", "trl_tokens_per_s", "ours_tokens_per_s",
               "ours_update_s", "ours_update_flops", "ours_update_tflops", "ours_mfu", "peak_tflops")


def check_figures(out: dict, args) -> None:
    assert set(UPDATE_KEYS) <= set(out)
    tokens = args.batch * (args.prompt_len + args.completion_len)
    assert out["tokens_per_step"] == tokens
    assert math.isclose(out["ours_tokens_per_s"], tokens / out["ours_s_per_step"], rel_tol=1e-3)  # s to 4 significant figures
    assert math.isclose(out["trl_tokens_per_s"], tokens / out["trl_s_per_step"], rel_tol=1e-3)
    assert out["ours_update_flops"] > 0 and 0 < out["ours_update_s"] < out["ours_s_per_step"]
    assert math.isclose(out["ours_update_flops"] / out["ours_update_s"], out["ours_update_tflops"] * 1e12, rel_tol=1e-4)


def test_bf16_run_reports_tokens_per_s_flops_and_mfu(fresh_accelerate, capsys):
    """The whole benchmark on CPU with bf16 autocast in both trainers: figures present, positive, consistent."""
    bench = load_bench()
    argv = [*TINY, "--dtype", "bfloat16", "--repeats", "1", "--warmup", "1", "--peak-tflops", "2.5"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = bench.main(argv)
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("{") and '"ours_mfu"' in printed[-1]  # the JSON is still the last line
    assert any(line.startswith("tokens/s") and "MFU" in line for line in printed)
    args = bench.parse_args(argv)
    check_figures(out, args)
    assert out["peak_tflops"] == 2.5
    assert math.isclose(out["ours_mfu"], out["ours_update_tflops"] / 2.5, rel_tol=1e-4)
    assert out["config"]["dtype"] == "bfloat16" and out["device_name"] == "cpu"
    # bf16 matmuls: only here are the tolerances relaxed, to bf16's precision (8 mantissa bits: 4e-3 relative)
    assert_agree(out["loss_check"], loss_rtol=1e-3, grad_rtol=2e-2, grad_atol=0.0)


def test_check_only_reports_flops_without_timing(fresh_accelerate):
    bench = load_bench()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = bench.main([*TINY, "--check-only"])
    assert out["ours_update_flops"] > 0 and out["ours_mfu"] is None and out["ours_update_s"] is None
    assert out["peak_tflops"] is None  # no peak is known for a CPU


def test_options_are_validated():
    bench = load_bench()
    for bad in (["--dtype", "float16"], ["--device", "tpu"], ["--peak-tflops", "0"], ["--vocab-size", "10"]):
        with pytest.raises(SystemExit):
            bench.parse_args([*TINY, *bad])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            bench.parse_args([*TINY, "--device", "cuda"])


def test_preset_shape_with_overrides():
    """--preset gives Qwen2.5-0.5B's shape; explicit options override it; the tokenizer fills the model's vocab."""
    bench = load_bench()
    args = bench.parse_args(["--preset", "qwen2.5-0.5b", "--layers", "1"])
    assert (args.hidden, args.layers, args.heads, args.kv_heads, args.intermediate, args.vocab_size) == (
        896, 1, 14, 2, 4864, 151936)
    assert args.words == 151936 - 30
    default = bench.parse_args([])
    assert (default.hidden, default.layers, default.heads, default.kv_heads, default.intermediate,
            default.vocab_size) == (128, 2, 4, 2, 512, 62)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (GPU figures: benchmarks/README.md)")
def test_cuda_bf16_run(fresh_accelerate, monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_CPU")
    bench = load_bench()
    argv = [*TINY, "--device", "cuda", "--dtype", "bfloat16", "--repeats", "1", "--warmup", "1"]
    out = bench.main(argv)
    check_figures(out, bench.parse_args(argv))
    assert out["ours_gpu_peak_mb"] > 0 and out["trl_gpu_peak_mb"] > 0
    assert out["device_name"] != "cpu"


def test_check_puts_both_trainers_on_the_chosen_device(tmp_path, fresh_accelerate, monkeypatch):
    """run_check itself applies --device (not only main()), so both trainers stay on the CPU even where a GPU is
    visible; --device cuda drops an ACCELERATE_USE_CPU the environment had set."""
    bench = load_bench()
    monkeypatch.delenv("ACCELERATE_USE_CPU")
    args = bench.parse_args(TINY)
    bench.use_device(args.device)
    assert os.environ["ACCELERATE_USE_CPU"] == "true"
    bench.use_device("cuda")
    assert "ACCELERATE_USE_CPU" not in os.environ
    tok = bench.save_tiny_model(args, tmp_path / "model")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check = bench.run_check(args, tmp_path / "model", tok, bench.make_rows(args, 8), tmp_path)
    assert os.environ["ACCELERATE_USE_CPU"] == "true" and check["per_loss_type"]


def test_words_only_with_the_default_tiny_vocab(capsys):
    bench = load_bench()
    for extra in (["--preset", "qwen2.5-0.5b"], ["--vocab-size", "500"]):
        with pytest.raises(SystemExit):
            bench.parse_args([*extra, "--words", "8"])
        assert "--words" in capsys.readouterr().err
    assert bench.parse_args(["--words", "8"]).vocab_size == 38
