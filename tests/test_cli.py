"""The command line: one-line errors for bad input, and `latentrl eval` on a saved checkpoint."""

import json

import pytest

from latentrl.cli import main
from latentrl.data import make_examples, task_vocabulary
from latentrl.data.schema import format_icot_line
from latentrl.testing import tiny_latent_model


def test_bad_config_key_is_a_one_line_error(capsys, tmp_path):
    assert main(["train", "--config", "configs/cpu/grpo.yaml", "learning_rat=1e-3"]) == 2
    err = capsys.readouterr().err
    assert "learning_rat" in err and "learning_rate" in err and "Traceback" not in err
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_eval_scores_a_checkpoint_on_a_data_file(capsys, tmp_path):
    model_dir = tmp_path / "model"
    tiny_latent_model("qwen2", task_vocabulary("icot_mult")).save_pretrained(model_dir)
    data = tmp_path / "valid.txt"
    data.write_text("\n".join(format_icot_line(ex) for ex in make_examples("icot_mult", 6, seed=1, digits=2)) + "\n")
    rc = main(["eval", "--model", str(model_dir), "--data", str(data), "--num", "6", "--k", "2", "--max-new", "8",
               "--out", str(tmp_path / "scratch")])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["n"] == 6 and out["k"] == 2 and 0.0 <= out["pass_at_1"] <= 1.0 and out["pass_at_k"] is not None
    assert "thought_dependence" not in out  # plain GRPO has no latent positions
    rc = main(["eval", "--model", str(model_dir), "--data", str(data), "--num", "6", "--k", "0", "--max-new", "8",
               "--method", "coconut_grpo", "--out", str(tmp_path / "scratch2"), "latent.num_latent_steps=2"])
    dep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["thought_dependence"]
    assert dep["n"] == 6 and dep["mean_latent_positions"] == 2.0
    assert dep["drop_swap"] == dep["pass_own"] - dep["pass_swap"]


def test_cpu_configs_name_shipped_models_and_missing_models_are_one_line_errors(capsys, monkeypatch, tmp_path):
    from latentrl.assets import model_path, resolve_model

    assert resolve_model("icot_mult_4x4-cot") == str(model_path("icot_mult_4x4-cot"))
    assert resolve_model("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"  # hub ids pass through
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network here: fail fast instead of retrying
    rc = main(["train", "--config", "configs/cpu/grpo.yaml", "model_name_or_path=/nonexistent/model", "max_steps=1",
               f"output_dir={tmp_path / 'run'}"])  # not the default runs/latentrl, which may hold a run here
    err = capsys.readouterr().err
    assert rc == 2 and "'/nonexistent/model' does not exist" in err and "Traceback" not in err
    assert err.count("icot_mult_4x4-cot,") == 1  # the shipped models, listed once


def test_eval_with_k_0_says_it_samples_no_pass_at_k(capsys):
    rc = main(["eval", "--model", "chain_sum-cot", "--data", "chain_sum", "--num", "4", "--k", "0"])
    err = capsys.readouterr().err
    assert rc == 0 and "no Pass@k (--k 0)" in err and "Pass@0" not in err


def test_every_cpu_preset_starts_from_a_shipped_model_or_names_the_command_that_builds_it():
    from pathlib import Path

    import yaml

    from latentrl.assets import resolve_model

    for path in sorted(Path("configs/cpu").glob("*.yaml")):
        text = path.read_text()
        name = yaml.safe_load(text)["model_name_or_path"]
        if Path(resolve_model(name)).is_dir():
            continue
        assert "latentrl bench" in text or "latentrl coconut-sft" in text, (path, name)  # built by a command


def test_plot_draws_a_runs_metrics_and_names_a_missing_log(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "reward": s / 10, "embeds_ratio": 0.99})
                                               + "\n" for s in range(1, 6)))
    assert main(["plot", str(run), "--keys", "reward", "embeds_ratio", "--out", str(tmp_path / "m.png")]) == 0
    assert (tmp_path / "m.png").stat().st_size > 0
    (tmp_path / "nothing").mkdir()
    assert main(["plot", str(tmp_path / "nothing")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


def _hrpo_run(tmp_path):
    """A run folder as `latentrl train` leaves it: run_config.json (method hrpo) and a checkpoint of the model."""
    from latentrl.config import GRPOConfig

    run = tmp_path / "run"
    ckpt = run / "checkpoint-1"
    tiny_latent_model("qwen2", task_vocabulary("icot_mult")).save_pretrained(ckpt)
    cfg = GRPOConfig.for_method("hrpo", model_name_or_path=str(ckpt), output_dir=str(run))
    (run / "run_config.json").write_text(json.dumps(cfg.to_dict()))
    data = tmp_path / "valid.txt"
    data.write_text("\n".join(format_icot_line(ex) for ex in make_examples("icot_mult", 4, seed=1, digits=2)) + "\n")
    return ckpt, data


def test_eval_reads_the_runs_settings_and_samples_at_its_temperature(capsys, tmp_path):
    ckpt, data = _hrpo_run(tmp_path)
    args = ["eval", "--model", str(ckpt), "--data", str(data), "--num", "4", "--k", "2", "--max-new", "8",
            "--out", str(tmp_path / "scratch")]
    assert main(args) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out.strip().splitlines()[-1])
    assert out["method"] == "hrpo" and out["settings"].endswith("run/run_config.json")
    assert out["temperature"] == 0.5  # HRPO's preset temperature, not the 1.0 of plain sampling
    assert out["mean_latent_positions"] > 0  # the hybrid latent model was evaluated, not plain GRPO
    assert "method hrpo, settings from" in captured.err and "4 problems" in captured.err
    assert main([*args, "--temperature", "0.9"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["temperature"] == 0.9


def test_eval_warns_when_the_budget_cuts_completions(capsys, tmp_path):
    import pytest

    ckpt, data = _hrpo_run(tmp_path)
    with pytest.warns(UserWarning, match="reached max_new_positions=2") as caught:
        assert main(["eval", "--model", str(ckpt), "--data", str(data), "--num", "4", "--k", "0", "--max-new", "2",
                     "--out", str(tmp_path / "scratch")]) == 0
    assert caught[0].filename.endswith("latentrl/cli.py")  # attributed to evaluate's caller, not torch's wrapper
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["truncated"] == 1.0


def test_a_coconut_init_runs_with_the_thoughts_it_was_trained_for(capsys, tmp_path):
    """`latent_init.json`'s thought count sets the Coconut family's span keys unless the command line sets them:
    the shipped chain_sum-coconut scores its ~93 % at its 7 thoughts (at the preset's 4 or 6 it drops to ~10 %)."""
    import json

    from latentrl.cli import with_recorded_thoughts
    from latentrl.config import GRPOConfig, load_config

    (tmp_path / "latent_init.json").write_text(json.dumps({"num_thoughts": 5}))
    base = [f"model_name_or_path={tmp_path}"]

    def cfg(method: str, cli: list[str] = ()):
        over = [*base, f"method={method}", *cli]
        return with_recorded_thoughts(load_config(GRPOConfig, None, over), None, over, cli)

    c = cfg("coconut_grpo")
    assert c.latent.num_latent_steps == 5 and (c.latent.max_latent_steps or 5) >= 5
    assert "trained with 5 thoughts" in capsys.readouterr().err
    c = cfg("latent_rl", ["latent.max_latent_steps=9"])  # the command line wins, key by key
    assert (c.latent.num_latent_steps, c.latent.max_latent_steps) == (5, 9)
    for given in (["--latent.num-latent-steps=3"], ["latent={num_latent_steps: 3}"]):  # spelt as overrides apply
        assert cfg("coconut_grpo", given).latent.num_latent_steps == 3
    from latentrl.bench import preset_path  # the CPU preset caps the span at 4: the cap rises with the count
    over = [*base]
    c = with_recorded_thoughts(load_config(GRPOConfig, preset_path("coconut_grpo"), over), str(
        preset_path("coconut_grpo")), over, over)
    assert (c.latent.num_latent_steps, c.latent.max_latent_steps) == (5, 5)
    assert cfg("dlr").dlr.num_latent_steps == 5
    assert cfg("grpo").latent.num_latent_steps == load_config(GRPOConfig, None, [*base]).latent.num_latent_steps
    (tmp_path / "latent_init.json").unlink()  # nothing recorded: the config as it was
    assert cfg("coconut_grpo").latent.num_latent_steps == load_config(
        GRPOConfig, None, [*base, "method=coconut_grpo"]).latent.num_latent_steps
    capsys.readouterr()
    rc = main(["eval", "--model", "chain_sum-coconut", "--data", "chain_sum", "--method", "coconut_grpo", "--num",
               "40", "--k", "0", "--no-thought-check"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and out["mean_latent_positions"] == 7.0 and out["pass_at_1"] >= 0.8


def test_eval_reads_a_latent_init_the_way_it_records(capsys, tmp_path):
    """Without --method / --config, `latentrl eval` scores a latent init with the method (and preset) its
    latent_init.json names in `scored_with`, not as a plain token model (chain_sum-coconut as plain GRPO: 0 %);
    --method, a `method=` override or --config still win, and a malformed record is a clear error."""
    import json

    from latentrl.assets import recorded_scoring

    rc = main(["eval", "--model", "chain_sum-coconut", "--data", "chain_sum", "--num", "40", "--k", "0",
               "--no-thought-check"])
    captured = capsys.readouterr()
    out = json.loads(captured.out.strip().splitlines()[-1])
    assert rc == 0 and out["method"] == "coconut_grpo" and out["pass_at_1"] >= 0.8 and out["mean_latent_positions"] == 7
    assert "scored_with (method coconut_grpo" in captured.err
    main(["eval", "--model", "chain_sum-coconut", "--data", "chain_sum", "--num", "4", "--k", "0", "--max-new", "4",
          "--no-thought-check", "method=grpo"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["method"] == "grpo"
    # naming the recorded method keeps the recorded preset (the paper's defaults are not the init's settings)
    assert main(["eval", "--model", "icot_mult_4x4-superposition", "--data", "icot_mult_4x4", "--num", "20", "--k",
                 "0", "--method", "latent_grpo", "--no-thought-check"]) == 0
    captured = capsys.readouterr()
    assert "scored_with (config configs/cpu/latent_grpo.yaml" in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["pass_at_1"] >= 0.4
    from latentrl.cli import recorded_scoring_unless_named as unless

    sup = "icot_mult_4x4-superposition"
    assert unless(sup, None, None, []) == {"method": "latent_grpo", "config": "configs/cpu/latent_grpo.yaml"}
    assert unless(sup, None, None, ["method=latent_grpo"]) == {"config": "configs/cpu/latent_grpo.yaml"}
    assert unless(sup, None, "grpo", []) == {} and unless(sup, "mine.yaml", None, []) == {}

    assert recorded_scoring(tmp_path) == {}  # no latent_init.json
    (tmp_path / "latent_init.json").write_text(json.dumps({"scored_with": {"method": "latent_grpo", "config": "c.yaml"}}))
    assert recorded_scoring(tmp_path) == {"method": "latent_grpo", "config": "c.yaml"}
    for bad in ({"scored_with": {"metod": "x"}}, {"scored_with": "latent_grpo"}):
        (tmp_path / "latent_init.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match="scored_with must be an object"):
            recorded_scoring(tmp_path)
    (tmp_path / "latent_init.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        recorded_scoring(tmp_path)

    # inspect reads the same record; a model that records no method still needs --method
    assert main(["inspect", "--model", "chain_sum-coconut", "--dataset", "chain_sum", "--num", "1",
                 "--max-positions", "8"]) == 0
    assert capsys.readouterr().out.startswith("coconut_grpo (operator hidden_state)")
    assert main(["inspect", "--model", "chain_sum-cot", "--dataset", "chain_sum", "--num", "1"]) == 2
    assert "needs the method that produced the checkpoint" in capsys.readouterr().err
    # train names no method by default: on a latent init that would be plain GRPO on a token model
    assert main(["train", "model_name_or_path=chain_sum-coconut", "dataset=chain_sum",
                 f"output_dir={tmp_path / 'run'}"]) == 2
    assert "is a latent init read by method 'coconut_grpo'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv", [
    ["eval", "--model", "chain_sum-cot", "--data", "chain_sum", "--k", "-1"],
    ["eval", "--model", "chain_sum-cot", "--data", "chain_sum", "--num", "0"],
    ["plot", "runs/x", "--smoothing", "5"],
    ["inspect", "--model", "chain_sum-coconut", "--method", "coconut_grpo", "--max-positions", "0"],
    ["bench", "--quick", "--num-eval", "0"],
])
def test_out_of_range_counts_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "must be" in capsys.readouterr().err


def test_eval_takes_a_suite_task_and_bench_names_the_task_of_a_dataset(capsys, tmp_path, monkeypatch):
    """`--data icot_mult_4x4` scores the bench's held-out problems of that task (the real valid file); `bench
    --tasks icot_mult` (the dataset's name) says which suite task that is."""
    import latentrl.eval
    from latentrl.bench import suite_tasks

    seen, evaluate = [], latentrl.eval.evaluate
    monkeypatch.setattr(latentrl.eval, "evaluate", lambda model, data, **kw: seen.append(data) or evaluate(
        model, data, **kw))
    assert main(["eval", "--model", "icot_mult_4x4-cot", "--data", "icot_mult_4x4", "--num", "3", "--k", "0"]) == 0
    assert seen[0] == suite_tasks()["icot_mult_4x4"].eval_examples(3)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 3
    assert main(["bench", "--quick", "--tasks", "icot_mult", "--out", str(tmp_path / "b")]) == 2
    assert "dataset 'icot_mult' is suite task 'icot_mult_4x4'" in capsys.readouterr().err


def test_eval_reports_the_standard_error_of_its_accuracies(capsys):
    import math

    assert main(["eval", "--model", "chain_sum-cot", "--data", "chain_sum", "--num", "8", "--k", "2"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("pass_at_1", "pass_at_k"):
        assert out[f"{key}_se"] == pytest.approx(math.sqrt(out[key] * (1 - out[key]) / 8))


def test_coconut_sft_logs_beside_the_model_it_writes(tmp_path, monkeypatch, capsys):
    """Without output_dir the model goes to runs/coconut, and so do its metrics and run config."""
    from latentrl.bench import CONFIGS

    monkeypatch.chdir(tmp_path)
    assert main(["coconut-sft", "--config", str(CONFIGS / "cpu" / "coconut_sft.yaml"), "num_epochs=2",
                 "num_train_examples=32", "max_latent_stage=1", "num_eval_examples=4"]) == 0
    out = tmp_path / "runs" / "coconut"
    assert "done: Coconut model in runs/coconut" in capsys.readouterr().out
    assert all((out / f).is_file() for f in ("config.json", "metrics.jsonl", "run_config.json"))


def test_coconut_sft_resume_keeps_the_run_settings_and_refuses_a_new_learning_rate(tmp_path, monkeypatch, capsys):
    """`coconut-sft --resume` goes on with the run's own settings (its run_config.json), changed only by the command
    line: an override given at the start and left out on resume is not lost. A new learning rate is refused (the
    restored AdamW state fixes it), before anything loads."""
    from latentrl.bench import CONFIGS

    monkeypatch.chdir(tmp_path)
    start = ["coconut-sft", "--config", str(CONFIGS / "cpu" / "coconut_sft.yaml"), "num_train_examples=32",
             "num_eval_examples=4", "eval_strategy=no", "save_steps=1", "output_dir=run", "num_epochs=3"]
    assert main([*start, "max_steps=1", "max_latent_stage=1", "c_thought=2"]) == 0  # time-boxed: a checkpoint
    capsys.readouterr()
    assert main([*start, "max_steps=2", "--resume"]) == 0
    assert "--resume: the run's settings from run/run_config.json, with " in capsys.readouterr().err
    saved = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert (saved["max_latent_stage"], saved["c_thought"], saved["max_steps"]) == (1, 2, 2)
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 2
    assert main([*start, "max_steps=3", "learning_rate=3e-4", "--resume"]) == 2
    assert "--resume cannot change learning_rate 0.001 -> 0.0003" in capsys.readouterr().err
