"""`latentrl demo --latent` (latentrl.demo.run_latent_demo) with tiny settings: the three rows on the same problems,
positions and the thought-swap check on the latent rows, the files it writes, and the CLI's flag handling. The
measured full-size run is in docs/benchmarks.md ("The demo")."""

from __future__ import annotations

import json

import pytest

from latentrl.assets import available_models
from latentrl.cli import main
from latentrl.config import ConfigError

pytestmark = pytest.mark.skipif("chain_sum-coconut" not in available_models(), reason="latent init not shipped")

TINY = ["per_device_train_batch_size=4", "num_generations=2", "report_to=[jsonl]"]


@pytest.fixture(scope="module")
def latent_demo(tmp_path_factory):
    from latentrl.demo import run_latent_demo

    out = tmp_path_factory.mktemp("demo") / "run"
    return out, run_latent_demo(steps=2, num_eval=6, k=2, out_dir=str(out), overrides=TINY)


def test_latent_demo_scores_cot_init_and_rl_rows_on_the_same_problems(latent_demo):
    out, summary = latent_demo
    cot, init, rl = summary["rows"]
    assert [r["n_eval"] for r in summary["rows"]] == [6, 6, 6]
    assert cot["init"] == "shipped checkpoint" and "chain_sum-cot" in cot["method"]
    assert "chain_sum-coconut" in init["method"] and rl["method"] == "coconut_grpo, 2 steps"
    # CoT writes its 7 steps (49 positions); the latent rows think 7 thoughts + <|end-latent|>
    assert cot["mean_reasoning_positions"] > 40 and cot["mean_latent_positions"] == 0
    for r in (init, rl):
        assert r["mean_reasoning_positions"] == 8 and r["mean_latent_positions"] == 7
        dep = r["thought_dependence"]
        assert dep["n"] == 6 and dep["mean_latent_positions"] == 7
        assert dep["drop_swap"] == pytest.approx(dep["pass_own"] - dep["pass_swap"])
        assert dep["pass_own"] == pytest.approx(r["pass_at_1"])  # the same greedy decode, scored twice
    assert cot["thought_dependence"] is None
    assert all(r["pass_at_k_temperature"] == summary["pass_at_k_temperature"] for r in summary["rows"])
    d = summary["paired_pass_at_1"]["rl_minus_latent_init"]
    assert d["n"] == 6 and d["diff"] == pytest.approx(rl["pass_at_1"] - init["pass_at_1"])


def test_latent_demo_writes_its_run_folder(latent_demo):
    out, summary = latent_demo
    for f in ("demo_results.json", "curves.png", "accuracy_vs_length.png", "metrics.jsonl", "run_config.json"):
        assert (out / f).is_file(), f
    saved = json.loads((out / "demo_results.json").read_text())
    assert saved["mode"] == "latent" and saved["steps"] == 2 and len(saved["rows"]) == 3
    assert json.loads((out / "run_config.json").read_text())["dataset"] == "chain_sum"


def test_latent_demo_refuses_an_existing_run_folder(latent_demo):
    from latentrl.demo import run_latent_demo

    out, _ = latent_demo
    with pytest.raises(ConfigError, match="already holds a run") as err:
        run_latent_demo(steps=1, num_eval=2, out_dir=str(out), overrides=TINY)
    assert "choose another --out" in str(err.value) and "--resume" not in str(err.value)  # demo cannot resume


def test_cli_latent_flag_refuses_another_method(tmp_path, capsys):
    assert main(["demo", "--latent", "--method", "grpo", "--out", str(tmp_path / "x")]) != 0
    assert "--latent runs coconut_grpo" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_the_default_demo_runs_both_parts_into_one_folder(tmp_path):
    """`latentrl demo` without flags: the latent parts (chain_sum, iCoT 4x4) and the RL part (iCoT 4x4) in
    sub-folders, one summary; a second run into the same folder is refused before anything runs."""
    from latentrl.demo import FULL_DEMO_PARTS, run_full_demo

    out = tmp_path / "run"
    summary = run_full_demo(steps=1, num_eval=3, out_dir=str(out), overrides=TINY)
    assert [r["n_eval"] for r in summary["latent"]["rows"]] == [3, 3, 3]
    icot = summary["latent_icot"]
    assert icot["task"] == "icot_mult_4x4" and [r["n_eval"] for r in icot["rows"]] == [3, 3, 3]
    assert "icot_mult_4x4-coconut" in icot["rows"][1]["method"]
    assert [r["mean_reasoning_positions"] for r in icot["rows"][1:]] == [15, 15]  # 14 thoughts + <|end-latent|>
    assert summary["icot_grpo"]["before"]["n"] == summary["icot_grpo"]["after"]["n"] == 3
    for part in FULL_DEMO_PARTS:
        assert (out / part / "demo_results.json").is_file() and (out / part / "curves.png").is_file()
    saved = json.loads((out / "demo_results.json").read_text())
    assert saved["latent"]["mode"] == "latent" and saved["icot_grpo"]["method"] == "grpo"
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(ConfigError, match="holds an earlier demo"):
        run_full_demo(steps=1, num_eval=3, out_dir=str(out), overrides=TINY)
    assert sorted(p.name for p in out.rglob("*")) == before


@pytest.mark.parametrize("argv, runs", [([], "full"), (["--latent"], "latent"), (["--method", "hrpo"], "rl"),
                                        (["--model", "m"], "rl"), (["--latent", "--task", "icot_mult_4x4"], "latent")])
def test_cli_demo_flags_choose_the_parts(argv, runs, monkeypatch):
    import latentrl.demo as demo

    called = []
    monkeypatch.setattr(demo, "run_full_demo", lambda **kw: called.append(("full", kw)))
    monkeypatch.setattr(demo, "run_latent_demo", lambda **kw: called.append(("latent", kw)))
    monkeypatch.setattr(demo, "run_demo", lambda **kw: called.append(("rl", kw)))
    assert main(["demo", *argv]) == 0
    assert [c[0] for c in called] == [runs]
    if runs == "latent":
        assert called[0][1]["task_name"] == ("icot_mult_4x4" if "--task" in argv else "chain_sum")
    if runs == "rl":
        assert called[0][1]["method"] == ("hrpo" if "--method" in argv else "grpo")


@pytest.mark.parametrize("argv, says", [
    (["--num-eval", "-5"], "argument --num-eval: must be >= 1, got -5"),
    (["--steps", "0"], "argument --steps: must be >= 1, got 0"),
    (["--task", "icot_mult_4x4"], "use it with --latent"),
    (["--method", "grpoo"], "unknown method 'grpoo'"),
])
def test_cli_demo_bad_options_are_one_line_errors(argv, says, tmp_path, capsys, monkeypatch):
    import latentrl.demo as demo

    monkeypatch.setattr(demo, "run_full_demo", lambda **kw: pytest.fail("the full demo ran"))
    try:
        rc = main(["demo", *argv, "--out", str(tmp_path / "d")])
    except SystemExit as e:  # argparse's usage error
        rc = e.code
    assert rc == 2 and says in capsys.readouterr().err and not (tmp_path / "d").exists()


def test_paired_difference_against_a_hand_computed_case():
    from latentrl.demo import paired_difference

    def row(scores):
        return {"samples": [{"prompt": f"q{i}", "correct": s} for i, s in enumerate(scores)]}

    # differences 1, 0, 0, -1, 1: mean 0.2, sample variance (0.64 + 0.04 + 0.04 + 1.44 + 0.64) / 4 = 0.7
    got = paired_difference(row([1.0, 1.0, 0.0, 0.0, 1.0]), row([0.0, 1.0, 0.0, 1.0, 0.0]))
    assert got["n"] == 5 and got["diff"] == pytest.approx(0.2)
    assert got["se"] == pytest.approx((0.7 / 5) ** 0.5)
    with pytest.raises(ValueError, match="same problems"):
        paired_difference(row([1.0, 0.0]), {"samples": [{"prompt": "other", "correct": 1.0}, {"prompt": "q1",
                                                                                             "correct": 0.0}]})
