"""The GRPO trainer: gradient accumulation invariance, exact resume after SIGKILL, clear errors, dynamic sampling."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from latentrl.config import GRPOConfig, LatentConfig
from latentrl.data import make_examples
from latentrl.model import LatentModel
from latentrl.optimizer_steps import TrainingDivergedError
from latentrl.rewards import RewardFunctionError
from latentrl.rl.trainer import GRPOTrainer
from latentrl.testing import tiny_chain_sum_model, word_count_reward


def examples(n=16):
    return make_examples("chain_sum", n, seed=0, length=3)



def config(tmp_path, **kw):
    base = dict(model_name_or_path="tiny", output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=8,
                num_generations=4, max_completion_length=8, learning_rate=1e-2, save_steps=0, report_to=["none"])
    base.update(kw)
    return GRPOConfig(**base)


def params(lm):
    return torch.cat([p.detach().flatten() for p in lm.model.parameters()])


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_gradient_accumulation_does_not_change_the_update(tmp_path, loss_type):
    runs = []
    for mb, ga in [(8, 1), (4, 2), (2, 4)]:
        lm = tiny_chain_sum_model()
        cfg = config(tmp_path / f"{mb}", per_device_train_batch_size=mb, gradient_accumulation_steps=ga,
                     loss_type=loss_type, beta=0.05, max_grad_norm=1e9)
        t = GRPOTrainer(cfg, lm, examples(), reward_funcs=[word_count_reward])
        m = t.train_step()
        runs.append((params(lm), m))
    base, m0 = runs[0]
    assert m0["grad_norm"] > 0
    for p, m in runs[1:]:
        torch.testing.assert_close(p, base, atol=1e-5, rtol=1e-4)  # Adam turns 1e-9 grad noise into ~1e-6
        assert m["loss"] == pytest.approx(m0["loss"], rel=1e-4, abs=1e-6)
        assert m["grad_norm"] == pytest.approx(m0["grad_norm"], rel=1e-4)


def test_raising_reward_function_is_named_in_the_error(tmp_path):
    def broken_reward(prompts, completions, **kw):
        raise KeyError("no such column")

    t = GRPOTrainer(config(tmp_path), tiny_chain_sum_model(), examples(), reward_funcs=[broken_reward])
    with pytest.raises(RewardFunctionError, match="broken_reward"):
        t.train_step()


def test_nan_loss_raises_and_keeps_checkpoints(tmp_path):
    t = GRPOTrainer(config(tmp_path, max_steps=2, save_steps=1), tiny_chain_sum_model(), examples(), reward_funcs=[word_count_reward])
    t.train()
    before = sorted(os.listdir(tmp_path))
    with torch.no_grad():
        t.model.model.get_input_embeddings().weight.fill_(float("nan"))
    t.args.max_steps = 3
    with pytest.raises((TrainingDivergedError, RuntimeError)):
        t.train_step()
    assert sorted(os.listdir(tmp_path)) == before and "checkpoint-2" in before


def test_dynamic_sampling_drops_zero_std_groups(tmp_path):
    def first_group_constant(prompts, completions, **kw):
        return [1.0 if p == prompts[0] else float(len(c.split()) % 2) for p, c in zip(prompts, completions)]

    t = GRPOTrainer(config(tmp_path, dynamic_sampling=True, max_resample_rounds=2), tiny_chain_sum_model(), examples(),
                    reward_funcs=[first_group_constant])
    batch, stats = t._collect_step_batch()
    r = batch.rewards.view(-1, 4)
    assert (r.std(dim=1) > 0).all(), "no zero-std group may survive dynamic sampling"
    assert stats["frac_reward_zero_std"] >= 0.5  # the first generated batch had the constant group


def test_unknown_method_and_bad_batch_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown method"):
        GRPOTrainer(config(tmp_path, method="nope"), tiny_chain_sum_model(), examples())
    with pytest.raises(ValueError, match="divisible by num_generations"):
        GRPOTrainer(config(tmp_path, per_device_train_batch_size=6, num_generations=4), tiny_chain_sum_model(), examples())


def test_latent_operator_runs_through_the_trainer(tmp_path):
    lm = tiny_chain_sum_model()
    cfg = config(tmp_path, method="grpo", latent=LatentConfig(operator="none"))
    assert GRPOTrainer(cfg, lm, examples(), reward_funcs=[word_count_reward]).train_step()["grad_norm"] > 0


SCRIPT = textwrap.dedent('''
    import os, signal, sys
    from latentrl.config import GRPOConfig
    from latentrl.data import make_examples
    from latentrl.model import LatentModel
    from latentrl.rl.trainer import GRPOTrainer

    init, out, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    calls = {"n": 0}

    def dying_reward(prompts, completions, **kw):
        calls["n"] += 1
        if calls["n"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # die mid-step, after earlier checkpoints were written
        return [float(len(c.split()) % 3) for c in completions]

    cfg = GRPOConfig(model_name_or_path=init, output_dir=out, max_steps=4, per_device_train_batch_size=4,
                     gradient_accumulation_steps=2, num_generations=4, max_completion_length=8, learning_rate=1e-2,
                     save_steps=1, save_total_limit=2, beta=0.02, report_to=["jsonl"],
                     resume_from_checkpoint="latest" if os.path.isdir(out) and os.listdir(out) else None)
    GRPOTrainer(cfg, LatentModel.from_pretrained(init), make_examples("chain_sum", 12, seed=0, length=3),
                reward_funcs=[dying_reward]).train()
''')


def test_sigkill_then_resume_ends_with_the_same_weights(tmp_path):
    init = tmp_path / "init"
    tiny_chain_sum_model().save_pretrained(init)
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "CI": "1"}

    def run(out, kill_at):
        return subprocess.run([sys.executable, str(script), str(init), str(out), str(kill_at)], env=env,
                              capture_output=True, text=True, timeout=300)

    straight = run(tmp_path / "straight", 0)
    assert straight.returncode == 0, straight.stderr[-2000:]
    crashed = run(tmp_path / "crashed", 3)  # killed inside step 3's reward computation
    assert crashed.returncode == -9
    assert sorted(p for p in os.listdir(tmp_path / "crashed") if p.startswith("checkpoint")) == ["checkpoint-1", "checkpoint-2"]
    resumed = run(tmp_path / "crashed", 0)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = LatentModel.from_pretrained(tmp_path / "straight" / "checkpoint-4")
    b = LatentModel.from_pretrained(tmp_path / "crashed" / "checkpoint-4")
    assert torch.equal(params(a), params(b))
    assert not torch.equal(params(a), params(LatentModel.from_pretrained(init)))
    steps = [l for l in (tmp_path / "crashed" / "metrics.jsonl").read_text().splitlines() if l.strip()]
    assert len(steps) == 4


def test_eval_dataset_is_scored_every_eval_steps(tmp_path):
    cfg = config(tmp_path, max_steps=2, eval_steps=1, report_to=["jsonl"])
    t = GRPOTrainer(cfg, tiny_chain_sum_model(), examples(), reward_funcs=[word_count_reward], eval_dataset=examples(4))
    history = t.train()
    assert all("eval/pass_at_1" in m and 0.0 <= m["eval/pass_at_1"] <= 1.0 for m in history)
    assert t.evaluate(k=2).pass_at_k is not None


def test_a_line_per_logged_step_on_the_console(tmp_path, capsys):
    """Batch jobs (no TTY, so no progress bar) still show progress: one line per `logging_steps` on stderr."""
    GRPOTrainer(config(tmp_path, max_steps=4, logging_steps=2), tiny_chain_sum_model(), examples(), reward_funcs=[word_count_reward]).train()
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("step ")]
    assert [ln.split(" | ")[0] for ln in lines] == ["step 2/4", "step 4/4"]
    assert all(" | reward " in ln and " | loss " in ln and ln.endswith(" s/step") for ln in lines)
    GRPOTrainer(config(tmp_path / "quiet", max_steps=2, log_to_console=False), tiny_chain_sum_model(), examples(),
                reward_funcs=[word_count_reward]).train()
    assert "step " not in capsys.readouterr().err


def test_step_batch_lives_on_the_model_device(tmp_path, monkeypatch):
    """Rewards are scored on the CPU; the step batch must carry them to the model's device with the rollout, or
    the advantages meet GPU log-probs in the policy loss (what the first H100 run found). Without a GPU, the
    model's device is reported as `meta`: a CPU tensor left in the batch then stays visibly on the CPU."""
    import latentrl.rl.trainer as trainer_module

    t = GRPOTrainer(config(tmp_path), tiny_chain_sum_model(), examples(), reward_funcs=[word_count_reward])
    rows = t.rows[:2]
    scored = t._generate_chunk([r for r in rows for _ in range(t.G)], torch.Generator().manual_seed(0))
    seen = {}

    def advantages(ctx, batch):
        seen.update(rewards=batch.rewards.device, per_func=batch.per_func_rewards.device,
                    logprobs=batch.rollout.logprobs.device)
        return torch.zeros_like(batch.rewards)

    monkeypatch.setattr(t, "_generate_chunk", lambda rows, generator: scored)
    monkeypatch.setattr(trainer_module, "chunk_generator", lambda *a: None)
    monkeypatch.setattr(t.method, "compute_advantages", advantages)
    monkeypatch.setattr(LatentModel, "device", property(lambda self: torch.device("meta")))
    batch = t.generate_and_score(rows)
    assert seen == {"rewards": torch.device("meta"), "per_func": torch.device("meta"), "logprobs": torch.device("meta")}
    assert batch.advantages.device == torch.device("meta")


def test_plausible_python_mistakes_are_clear_errors(tmp_path):
    """The model as a folder (TRL takes an id) loads; a bare HF model, text rows, an empty prompt and no reward
    functions are errors that say what to pass."""
    folder = tmp_path / "m"
    tiny_chain_sum_model().save_pretrained(folder)
    t = GRPOTrainer(config(tmp_path / "a"), str(folder), examples(), reward_funcs=[word_count_reward])
    assert isinstance(t.model, LatentModel)
    with pytest.raises(TypeError, match=r"needs a LatentModel, got .*LatentModel\(model, tokenizer\)"):
        GRPOTrainer(config(tmp_path / "b"), tiny_chain_sum_model().model, examples(), reward_funcs=[word_count_reward])
    with pytest.raises(ValueError, match="the training dataset: row 0 is a str .*not a dict row with a 'prompt'"):
        GRPOTrainer(config(tmp_path / "c"), folder, ["2 + 3 =", "1 + 1 ="], reward_funcs=[word_count_reward])
    with pytest.raises(ValueError, match="row 1 has an empty prompt"):
        GRPOTrainer(config(tmp_path / "d"), folder, [{"prompt": "1 2"}, {"prompt": " "}],
                    reward_funcs=[word_count_reward])
    with pytest.raises(ValueError, match="no reward functions"):
        GRPOTrainer(config(tmp_path / "e"), folder, examples(), reward_funcs=[])


def test_the_method_argument_is_the_method_the_run_records(tmp_path):
    """GRPOTrainer(method="hrpo") with a grpo config warns that no presets apply, and records hrpo in
    run_config.json (which `latentrl eval` reads) as in the checkpoint."""
    import json

    cfg = config(tmp_path, report_to=["jsonl"], save_steps=1,
                 latent=LatentConfig(operator="hrpo_gate", answer_delimiter="####"))
    with pytest.warns(UserWarning, match="method='hrpo' with a config for 'grpo'"):
        t = GRPOTrainer(cfg, tiny_chain_sum_model(), examples(), reward_funcs=[word_count_reward], method="hrpo")
    t.train()
    assert json.loads((tmp_path / "run_config.json").read_text())["method"] == "hrpo" == t.args.method
    assert cfg.method == "grpo"  # the caller's config is not changed


def test_python_api_warns_when_a_coconut_init_runs_with_another_thought_count():
    """From Python the config is the caller's; a Coconut init that records its thought count warns when the
    method's span keys say another (the command line sets them from the record instead)."""
    import warnings

    from latentrl.methods import get_method

    lm = LatentModel.from_pretrained("chain_sum-coconut")
    assert lm.trained_num_thoughts == 7
    cfg = GRPOConfig.for_method("coconut_grpo", model_name_or_path="chain_sum-coconut")
    with pytest.warns(UserWarning, match=r"trained with 7 thoughts .* latent.num_latent_steps=\d"):
        get_method("coconut_grpo").build(lm, cfg)
    cfg = GRPOConfig.for_method("coconut_grpo", model_name_or_path="chain_sum-coconut",
                                latent={"num_latent_steps": 7, "max_latent_steps": 7})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        get_method("coconut_grpo").build(LatentModel.from_pretrained("chain_sum-coconut"), cfg)


def test_a_lora_adapter_of_a_coconut_init_answers_with_its_base_thought_count(tmp_path):
    """A LoRA folder saved from a shipped Coconut init records no thought count itself: the count is its base's,
    both for the CLI (`recorded_num_thoughts`) and for the loaded model (`trained_num_thoughts`)."""
    from latentrl.assets import recorded_num_thoughts
    from latentrl.config import LoraConfig

    lm = LatentModel.from_pretrained("chain_sum-coconut")
    lm.apply_lora(LoraConfig(enabled=True, r=4, target_modules=["q_proj"]))
    lm.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert not (tmp_path / "adapter" / "latent_init.json").exists()
    assert recorded_num_thoughts(tmp_path / "adapter") == 7
    assert LatentModel.from_pretrained(tmp_path / "adapter").trained_num_thoughts == 7
    # a plain adapter of a model with no record: None, not an error
    plain = LatentModel.from_pretrained("chain_sum-cot")
    plain.apply_lora(LoraConfig(enabled=True, r=4, target_modules=["q_proj"]))
    plain.save_pretrained(tmp_path / "plain")
    assert recorded_num_thoughts(tmp_path / "plain") is None
