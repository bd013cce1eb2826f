"""What a TRL user expects from `latentrl train`: reward functions by dotted path, TRL's `prompt`-column datasets
(text or chat messages, extra columns reaching the rewards), `num_train_epochs` and `report_to` (wandb included).

The runs use a tiny random Qwen2 saved as `model/` with a word tokenizer and a toy chat template; `wandb` is never
installed here: a fake module in `sys.modules` stands in for it.
"""

from __future__ import annotations

import json
import sys
import types

import pytest

from latentrl.cli import main
from latentrl.config import ConfigError, GRPOConfig, config_help
from latentrl.data import load_examples, task_vocabulary
from latentrl.data.schema import DataFormatError
from latentrl.logger import MetricsLogger, read_metrics
from latentrl.rl.trainer import GRPOTrainer
from latentrl.testing import tiny_latent_model

TEMPLATE = ("{% for m in messages %}{{ m.role }} : {{ m.content }} || {% endfor %}"
            "{% if add_generation_prompt %}assistant : {% endif %}")
WORDS = [*task_vocabulary("chain_sum"), "system", "user", "assistant"]
REWARDS = '''
CALLS = []
NOT_A_FUNCTION = 3


def length_reward(prompts, completions, **kwargs):
    """Varies across completions, records what it was called with."""
    CALLS.append({"prompts": prompts, "completions": completions, "columns": sorted(kwargs)})
    text = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [float(len(t.split()) % 3) for t in text]


def needs_no_columns(completions):
    return [0.0 for _ in completions]
'''
STRING_ROWS = [{"prompt": f"{a} + {b} ||", "solution": str(a + b)} for a, b in ((1, 2), (3, 4), (5, 6), (7, 8), (9, 1))]
CHAT_ROWS = [{"prompt": [{"role": "user", "content": r["prompt"]}], "solution": r["solution"]} for r in STRING_ROWS]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    lm = tiny_latent_model("qwen2", WORDS, seed=0, hidden=32)
    lm.tokenizer.chat_template = TEMPLATE
    lm.save_pretrained(tmp_path / "model")
    (tmp_path / "my_rewards.py").write_text(REWARDS)
    write_jsonl(tmp_path / "prompts.jsonl", STRING_ROWS)
    write_jsonl(tmp_path / "chat.jsonl", CHAT_ROWS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the resolver may add the working directory: undo it after
    monkeypatch.delitem(sys.modules, "my_rewards", raising=False)
    yield tmp_path
    sys.modules.pop("my_rewards", None)


def train_args(*extra: str) -> list[str]:
    return ["train", "model_name_or_path=model", "dataset=prompts.jsonl", "output_dir=run", "num_generations=2",
            "per_device_train_batch_size=4", "max_completion_length=4", "save_steps=0", "report_to=[jsonl]",
            "learning_rate=1e-3", *extra]


@pytest.fixture
def no_model_loading(monkeypatch):
    """Errors must come before the (possibly slow) model load: loading it fails this test."""
    import latentrl.cli

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the error")

    monkeypatch.setattr(latentrl.cli, "build_model_for", refuse)


# ------------------------------------------------------------------------------------------ reward functions
def test_reward_function_by_dotted_path_gets_the_dataset_columns(workdir, capsys):
    assert main(train_args("max_steps=2", "reward_funcs=[my_rewards.length_reward,format]")) == 0, capsys.readouterr().err
    calls = sys.modules["my_rewards"].CALLS
    assert len(calls) == 2  # one rollout batch per step
    assert set(calls[0]["prompts"]) <= {r["prompt"] for r in STRING_ROWS}
    assert calls[0]["columns"] == ["completion_ids", "solution", "trainer_state"] and all(isinstance(c, str) for c in calls[0]["completions"])
    records = read_metrics(workdir / "run")
    assert [r["step"] for r in records] == [1, 2]
    assert "rewards/length_reward/mean" in records[0] and "rewards/format_reward/mean" in records[0]


@pytest.mark.parametrize("name, message", [
    ("no_such_module.reward", "no module named 'no_such_module'"),
    ("my_rewards.lenght_reward", "has no attribute 'lenght_reward' (did you mean 'length_reward'?)"),
    ("my_rewards.NOT_A_FUNCTION", "is an int, not a function"),
    ("my_rewards.needs_no_columns", "prompts"),
    ("corectness", "did you mean 'correctness'"),
])
def test_bad_reward_function_names_fail_before_the_model_loads(workdir, capsys, no_model_loading, name, message):
    assert main(train_args("max_steps=1", f"reward_funcs=[{name}]")) == 2
    err = capsys.readouterr().err
    assert message in err and name in err and "Traceback" not in err, err
    assert not (workdir / "run").exists()


def test_reward_module_that_fails_to_import_names_the_cause(workdir, capsys, no_model_loading):
    (workdir / "broken_rewards.py").write_text("import no_such_dependency\n\ndef r(prompts, completions, **kw):\n"
                                               "    return [0.0] * len(completions)\n")
    assert main(train_args("reward_funcs=[broken_rewards.r]")) == 2
    err = capsys.readouterr().err
    assert "broken_rewards" in err and "no_such_dependency" in err, err


# ------------------------------------------------------------------------------------------ prompt datasets
def test_prompt_rows_load_as_trl_rows_and_question_answer_loaders_refuse_them(workdir):
    from latentrl.data import load_rows

    assert load_rows("prompts.jsonl") == STRING_ROWS
    assert load_rows("chat.jsonl", n=2) == CHAT_ROWS[:2]
    with pytest.raises(DataFormatError, match=r"line 1: .*TRL's prompt format.*load_rows"):
        load_examples("prompts.jsonl")
    bad = write_jsonl(workdir / "bad.jsonl", [{"prompt": [{"content": "1 ||"}]}])
    with pytest.raises(DataFormatError, match=r"bad.jsonl, line 1: .*'prompt' must be a non-empty string or a list of "
                                              r"chat messages"):
        load_rows(bad)
    # question/answer rows are unchanged
    assert load_rows("chain_sum", split="eval", n=2) == load_examples("chain_sum", split="eval", n=2)


def test_conversational_prompts_use_the_chat_template_and_rewards_get_trl_shaped_arguments(workdir):
    from latentrl.data import load_rows
    from latentrl.rewards import resolve_reward_func

    length_reward = resolve_reward_func("my_rewards.length_reward")  # from the working directory, as the CLI does

    cfg = GRPOConfig(model_name_or_path="model", output_dir=str(workdir / "py"), max_steps=1, num_generations=2,
                     per_device_train_batch_size=4, max_completion_length=4, save_steps=0, report_to=["none"])
    from latentrl.model import LatentModel

    trainer = GRPOTrainer(cfg, LatentModel.from_pretrained("model"), load_rows("chat.jsonl"),
                          reward_funcs=[length_reward])
    assert trainer.prompt_text(CHAT_ROWS[0]) == "user : 1 + 2 || || assistant : "  # prompt_format=raw: still the template
    trainer.train()
    call = sys.modules["my_rewards"].CALLS[-1]
    assert all(isinstance(p, list) and p[-1]["role"] == "user" for p in call["prompts"])  # the messages, as TRL
    assert all(isinstance(c, list) and len(c) == 1 and c[0]["role"] == "assistant" for c in call["completions"])
    assert call["columns"] == ["completion_ids", "solution", "trainer_state"]  # as TRL passes them


def test_cli_trains_on_a_chat_prompt_file(workdir, capsys):
    assert main(train_args("max_steps=1", "dataset=chat.jsonl", "reward_funcs=[my_rewards.length_reward]")) == 0, \
        capsys.readouterr().err
    assert [r["step"] for r in read_metrics(workdir / "run")] == [1]


# ------------------------------------------------------------------------------------------ num_train_epochs
def test_max_steps_default_and_num_train_epochs_follow_hf():
    import dataclasses

    from latentrl.rl.trainer import run_length

    base = GRPOConfig(model_name_or_path="m")
    assert base.max_steps is None and run_length(base, 10, 2) == 100  # the length when neither is given, as before
    assert run_length(dataclasses.replace(base, num_train_epochs=2), 10, 2) == 10  # 2 passes over 10 prompts, 2 a step
    assert run_length(dataclasses.replace(base, num_train_epochs=0.3), 10, 4) == 1  # ceil(0.75), at least one step
    assert run_length(dataclasses.replace(base, num_train_epochs=2, max_steps=7), 10, 2) == 7  # max_steps > 0 wins
    assert run_length(dataclasses.replace(base, num_train_epochs=2, max_steps=-1), 10, 2) == 10
    with pytest.raises(ConfigError, match="num_train_epochs"):
        GRPOConfig(model_name_or_path="m", max_steps=0)
    help_text = config_help(GRPOConfig)
    words = " ".join(help_text.split())
    assert "num_train_epochs" in words and "max_steps > 0 wins over num_train_epochs" in words


@pytest.mark.parametrize("extra, steps", [
    (["num_train_epochs=1"], 3),  # 5 prompts, 2 per step: ceil(5 / 2)
    (["num_train_epochs=1.5"], 4),  # ceil(1.5 * 5 / 2)
    (["num_train_epochs=1", "max_steps=2"], 2),  # max_steps > 0 wins (HF)
])
def test_num_train_epochs_sets_the_run_length(workdir, capsys, extra, steps):
    args = train_args("reward_funcs=[my_rewards.length_reward]", "lr_scheduler_type=linear", *extra)
    assert main(args) == 0, capsys.readouterr().err
    records = read_metrics(workdir / "run")
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    assert records[-1]["learning_rate"] == 0.0  # the linear schedule spans exactly the resolved length
    assert f"done: {steps} steps" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ report_to
class FakeRun:
    def __init__(self, **kwargs):
        self.init_kwargs, self.logged, self.defined, self.finished = kwargs, [], [], False

    def log(self, data, **kwargs):
        self.logged.append(dict(data))

    def define_metric(self, name, **kwargs):
        self.defined.append((name, kwargs))

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    module = types.ModuleType("wandb")
    module.run = None
    module.runs = []

    def init(**kwargs):
        run = FakeRun(**kwargs)
        module.runs.append(run)
        module.run = run
        return run

    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module


def test_report_to_wandb_logs_every_step_with_the_run_config(workdir, capsys, fake_wandb):
    assert main(train_args("max_steps=2", "report_to=[wandb]", "reward_funcs=[my_rewards.length_reward]")) == 0, \
        capsys.readouterr().err
    (run,) = fake_wandb.runs
    assert run.init_kwargs["config"]["num_generations"] == 2 and run.init_kwargs["name"] == "run"
    assert [d["train/global_step"] for d in run.logged] == [1, 2] and all("reward" in d for d in run.logged)
    assert run.finished
    assert not (workdir / "run" / "metrics.jsonl").exists() and not (workdir / "run" / "tb").exists()


def test_report_to_wandb_without_wandb_is_a_clear_early_error(workdir, capsys, monkeypatch, no_model_loading):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` fails, as when it is not installed
    with pytest.raises(ConfigError, match="pip install wandb"):
        GRPOConfig(model_name_or_path="m", report_to=["wandb"])
    assert main(train_args("report_to=[tensorboard,wandb]")) == 2
    assert "pip install wandb" in capsys.readouterr().err
    with pytest.raises(ValueError, match="pip install wandb"):
        MetricsLogger(workdir / "logs", report_to=["wandb"])


def test_report_to_none_and_tensorboard_alone(workdir):
    with MetricsLogger(workdir / "tb_only", report_to="tensorboard") as log:
        log.log(1, {"reward": 1.0})
    assert (workdir / "tb_only" / "tb").is_dir() and not (workdir / "tb_only" / "metrics.jsonl").exists()
    assert GRPOConfig(model_name_or_path="m", report_to=["none"]).report_to == ["none"]
    assert GRPOConfig(model_name_or_path="m").report_to == ["jsonl", "tensorboard"]


def test_chat_rows_without_a_chat_template_and_eval_rows_without_answers_fail_when_the_trainer_is_built(tmp_path):
    cfg = GRPOConfig(model_name_or_path="m", output_dir=str(tmp_path), max_steps=1, num_generations=2,
                     per_device_train_batch_size=4, max_completion_length=4, report_to=["none"])
    plain = tiny_latent_model("qwen2", WORDS, seed=0, hidden=32)  # no chat template
    with pytest.raises(ConfigError, match="chat template"):
        GRPOTrainer(cfg, plain, CHAT_ROWS, reward_funcs=["format"])
    with pytest.raises(ConfigError, match="evaluation rows need an 'answer' column"):
        GRPOTrainer(cfg, plain, STRING_ROWS, reward_funcs=["format"], eval_dataset=STRING_ROWS)


def test_coconut_sft_config_takes_wandb_too(monkeypatch, fake_wandb):
    from latentrl.sft.coconut import CoconutConfig

    assert CoconutConfig(report_to=["jsonl", "wandb"]).report_to == ["jsonl", "wandb"]
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ConfigError, match="pip install wandb"):
        CoconutConfig(report_to=["wandb"])
