"""Training-data provenance (`latentrl.data.provenance`) and the bench's RL prompts that stay off it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latentrl.assets import available_models, model_path
from latentrl.bench import rl_prompts, suite_tasks
from latentrl.data import load_examples, train_eval_split
from latentrl.data.provenance import TrainDraw, read_train_draws, training_questions

CS = {"length": 8, "modulus": 10, "ops": "+"}
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def write_meta(folder, draws, name="latent_init.json"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps({"command": "x", "train_data": draws}))
    return folder


def test_a_train_split_draw_regenerates_the_loaded_questions():
    draw = TrainDraw.of_train_split("chain_sum", 300, 3, **CS)
    loaded = load_examples("chain_sum", split="train", n=300, seed=3, **CS)
    assert draw.questions() == {ex.question for ex in loaded}
    assert TrainDraw.from_dict(draw.to_dict()) == draw


def test_read_train_draws_from_either_metadata_file(tmp_path):
    assert read_train_draws(tmp_path) == []  # a folder that records nothing (e.g. a hub model)
    a = {"dataset": "chain_sum", "n_train": 50, "n_eval": 10, "seed": 0, "knobs": CS}
    b = {"dataset": "icot_mult", "n_train": 40, "n_eval": 0, "seed": 1, "knobs": {"digits": 2}}
    write_meta(tmp_path / "pre", [a], name="results.json")
    assert read_train_draws(tmp_path / "pre") == [TrainDraw("chain_sum", 50, 10, 0, CS)]
    write_meta(tmp_path / "init", [a, b])
    both = training_questions(tmp_path / "init")
    cs, _ = train_eval_split("chain_sum", 50, 10, 0, **CS)
    mult, _ = train_eval_split("icot_mult", 40, 0, 1, digits=2)
    assert both == {ex.question for ex in cs + mult}
    assert training_questions(tmp_path / "init", "chain_sum") == {ex.question for ex in cs}


@pytest.mark.parametrize("bad, words", [
    ({"dataset": "chain_sum", "n_train": 5, "seed": 0}, "missing ['n_eval']"),
    ({"dataset": "chain_sum", "n_train": 5, "n_eval": 0, "seed": 0, "size": 3}, "unknown ['size']"),
])
def test_a_malformed_draw_is_a_clear_error(tmp_path, bad, words):
    write_meta(tmp_path, [bad])
    with pytest.raises(ValueError, match=r"latent_init.json: train_data\[0\]") as e:
        read_train_draws(tmp_path)
    assert words in str(e.value)
    (tmp_path / "latent_init.json").write_text(json.dumps({"train_data": {"dataset": "chain_sum"}}))
    with pytest.raises(ValueError, match="must be a list"):
        read_train_draws(tmp_path)
    (tmp_path / "latent_init.json").write_text("{truncated")
    with pytest.raises(ValueError, match="not a JSON object"):
        read_train_draws(tmp_path)


def test_rl_prompts_skip_what_the_starting_checkpoint_trained_on(tmp_path):
    """The first 3,000 problems of the RL stream itself are the init's: the prompts come after them."""
    task = suite_tasks()["chain_sum"]
    first = rl_prompts(task, tmp_path / "hub_model", 500, 0)
    plain = first.examples
    assert first.n_excluded == 0 and plain == load_examples("chain_sum", split="train", n=500, seed=0, **CS)
    init = write_meta(tmp_path / "init", [TrainDraw.of_train_split("chain_sum", 3000, 0, **CS).to_dict()])
    seen = training_questions(init)
    drawn = rl_prompts(task, init, 500, 0)
    prompts = drawn.examples
    assert drawn.n_excluded == len(seen) and len(prompts) == 500
    assert not {ex.question for ex in prompts} & seen
    assert {ex.question for ex in plain} <= seen  # without the record every prompt would have been a seen one


def test_every_shipped_model_records_its_training_draws():
    tasks = {t.dataset for t in suite_tasks().values()}
    for name in available_models():
        draws = read_train_draws(model_path(name))
        assert draws and all(d.dataset in tasks and d.n_train > 0 for d in draws), name


@pytest.mark.parametrize("task_name, init", [("chain_sum", "chain_sum-superposition"),
                                             ("icot_mult_4x4", "icot_mult_4x4-superposition")])
def test_bench_rl_prompts_are_new_to_the_shipped_latent_init(task_name, init):
    task = suite_tasks()[task_name]
    drawn = rl_prompts(task, model_path(init), 200, 0)
    seen = training_questions(model_path(init), task.dataset)
    assert drawn.n_excluded == len(seen) > 8000 and not {ex.question for ex in drawn.examples} & seen


def test_latentrl_train_draws_no_prompt_the_starting_model_trained_on(tmp_path, capsys):
    """`latentrl train` with a built-in task leaves out the starting model's recorded draws (and says so), keeps
    them with `exclude_init_train_data=false`, and ignores the record for data files."""
    from latentrl.cli import load_train_data
    from latentrl.config import ConfigError, GRPOConfig, config_from_dict

    recorded, _ = train_eval_split("chain_sum", 150, 500, 0)  # the first 150 of the default train draw
    seen = {ex.question for ex in recorded}
    init = write_meta(tmp_path / "init", [TrainDraw.of_train_split("chain_sum", 150, 0).to_dict()])

    def draw(**over):
        cfg = config_from_dict(GRPOConfig, {"model_name_or_path": str(init), "dataset": "chain_sum",
                                            "num_train_examples": 300, **over})
        return load_train_data(cfg)

    kept = draw()
    assert len(kept) == 300 and not {ex.question for ex in kept} & seen
    assert "leaving out the 150 problems" in capsys.readouterr().out
    plain = draw(exclude_init_train_data=False)
    assert plain == load_examples("chain_sum", split="train", n=300, seed=0) and seen <= {ex.question for ex in plain}
    assert [e.answer for e in draw(dataset=str(FIXTURES / "math500_small.jsonl"), num_train_examples=2)] == \
        ["14", "\\frac{3}{4}"]
    (init / "latent_init.json").write_text(json.dumps({"train_data": [{"dataset": "chain_sum"}]}))
    with pytest.raises(ConfigError, match="starting model's training record: .*latent_init.json"):
        draw()


def test_a_draw_that_skipped_others_regenerates_what_was_loaded(tmp_path):
    """`excluded`: a draw made off other draws' questions (RL prompts off the init's) regenerates exactly the loaded
    questions, round-trips through JSON, and nests."""
    from latentrl.data.provenance import write_train_draws

    a = TrainDraw.of_train_split("chain_sum", 80, 0)
    b = TrainDraw.of_train_split("chain_sum", 120, 0, excluded=(a,))
    c = TrainDraw.of_train_split("chain_sum", 60, 0, excluded=(a, b))
    loaded_b = load_examples("chain_sum", split="train", n=120, seed=0, exclude=a.questions())
    assert b.questions() == {ex.question for ex in loaded_b} and not b.questions() & a.questions()
    assert not c.questions() & (a.questions() | b.questions()) and len(c.questions()) == 60
    write_train_draws(tmp_path, [a, c])
    assert read_train_draws(tmp_path) == [a, c]
    bad = {**a.to_dict(), "excluded": {"dataset": "chain_sum"}}
    (tmp_path / "train_data.json").write_text(json.dumps({"train_data": [bad]}))
    with pytest.raises(ValueError, match=r"train_data\[0\]: excluded must be a list"):
        read_train_draws(tmp_path)


def test_rl_checkpoints_carry_the_record_so_a_continued_run_stays_off_the_init_data(tmp_path):
    """`latentrl train` from a model that records its draws writes them, and its own prompt draw, into every
    checkpoint (`train_data.json`); a second run started from that checkpoint leaves out both."""
    from latentrl.cli import load_train_data, main
    from latentrl.config import GRPOConfig, config_from_dict
    from latentrl.testing import tiny_chain_sum_model

    init = tmp_path / "init"
    tiny_chain_sum_model().save_pretrained(init)
    first = TrainDraw.of_train_split("chain_sum", 40, 0)
    write_meta(init, [first.to_dict()])
    out = tmp_path / "rl"
    assert main(["train", f"model_name_or_path={init}", "dataset=chain_sum", "num_train_examples=30",
                 f"output_dir={out}", "max_steps=1", "num_generations=2", "per_device_train_batch_size=2",
                 "max_completion_length=4", "report_to=[none]", "log_to_console=false"]) == 0
    ckpt = out / "checkpoint-1"
    rl_draw = TrainDraw.of_train_split("chain_sum", 30, 0, excluded=(first,))
    assert read_train_draws(ckpt) == [first, rl_draw]
    cfg = config_from_dict(GRPOConfig, {"model_name_or_path": str(ckpt), "dataset": "chain_sum",
                                        "num_train_examples": 50})
    again = {ex.question for ex in load_train_data(cfg)}
    assert len(again) == 50 and not again & (first.questions() | rl_draw.questions())


@pytest.mark.parametrize("task_name, init", [("chain_sum", "chain_sum-coconut")])
def test_the_bench_records_what_its_rl_runs_train_on(task_name, init):
    """`rl_prompts(...).record`, what the bench's and the demo's RL checkpoints carry: the init's draws, then a
    draw that regenerates exactly the RL prompts `rl_prompts` gives."""
    task = suite_tasks()[task_name]
    drawn = rl_prompts(task, model_path(init), 200, 0)
    assert drawn.record[:-1] == read_train_draws(model_path(init))
    assert drawn.record[-1].questions() == {ex.question for ex in drawn.examples}
