"""The CPU suite's task table (`latentrl.bench.suite_tasks`): tasks resolve to shipped models and held-out data."""

from __future__ import annotations

import json

import matplotlib.image
import pytest
import yaml

from latentrl.assets import model_path
from latentrl.bench import CONFIGS, check_disjoint, load_config, preset_path, run_bench, suite_tasks, write_results
from latentrl.config import GRPOConfig
from latentrl.data import Example, load_examples, train_eval_split
from latentrl.data.schema import format_cot
from latentrl.inits import COCONUT_SFT_PRESET as CPU_PRESET
from latentrl.sft.coconut import CoconutConfig


@pytest.fixture(scope="module")
def chain_sum():
    return suite_tasks()["chain_sum"]


def test_chain_sum_resolves_to_its_shipped_models_and_generated_eval(chain_sum):
    assert model_path(chain_sum.cot_model).name == "chain_sum-cot"
    assert model_path(chain_sum.nocot_model).name == "chain_sum-nocot"
    evals = chain_sum.eval_examples(200)
    assert len(evals) == 200 and evals == chain_sum.eval_examples(200)  # deterministic
    assert chain_sum.eval_examples(50) == evals[:50]  # a prefix, so --num-eval n scores the first n
    ex = evals[0]
    digits = [int(d) for d in ex.question.split()]
    assert len(digits) == 8 and len(ex.steps) == 7 and ex.answer == str(sum(digits) % 10)


def test_chain_sum_eval_is_disjoint_from_every_training_split(chain_sum):
    """Recomputed from the pretraining YAML itself: the shipped models' training questions, the RL presets' train
    split (seeds 0 and 1) and the Coconut init's train split never contain an evaluation question."""
    pre = yaml.safe_load((CONFIGS / "pretrain_chain_sum.yaml").read_text())
    assert pre["task"] == chain_sum.dataset and pre["difficulty"] == chain_sum.dataset_kwargs
    pretrain, _ = train_eval_split(pre["task"], pre["num_train_examples"], pre["num_eval_examples"], pre["seed"],
                                   **pre["difficulty"])
    n_rl = load_config(GRPOConfig, preset_path("grpo")).num_train_examples
    n_coconut = load_config(CoconutConfig, CPU_PRESET).num_train_examples
    eval_q = {ex.question for ex in chain_sum.eval_examples(1000)}
    assert len(eval_q) > 990  # 10^8 questions: repeats are rare
    assert not eval_q & {ex.question for ex in pretrain}
    for seed in (0, 1):
        rl = load_examples("chain_sum", split="train", n=n_rl, seed=seed, **chain_sum.dataset_kwargs)
        assert not eval_q & {ex.question for ex in rl}
    coconut = load_examples("chain_sum", split="train", n=n_coconut, seed=0, **chain_sum.dataset_kwargs)
    assert not eval_q & {ex.question for ex in coconut}


def test_chain_sum_completion_budget_fits_the_cot(chain_sum):
    """max_completion_length covers the whole CoT target (7 steps + answer + eos) in the shipped tokenizer."""
    from latentrl.model import LatentModel

    tok = LatentModel.from_pretrained(model_path(chain_sum.cot_model)).tokenizer
    longest = max(len(tok(format_cot(ex), add_special_tokens=False)["input_ids"]) + 1
                  for ex in chain_sum.eval_examples(50))
    assert longest == 7 * 7 + 2 + 1  # `<< x + y = z >>` is 7 words; `#### d`; eos
    assert longest <= chain_sum.max_completion_length


def test_chain_sum_coconut_settings_match_its_step_count(chain_sum):
    """One Coconut stage (and thought) per step: the init replaces all 7 steps, the RL presets think 7 thoughts."""
    cfg = load_config(CoconutConfig, CPU_PRESET, chain_sum.init_overrides["coconut_sft"])
    assert cfg.max_latent_stage * cfg.c_thought == 7
    for method in ("coconut_grpo", "latent_rl"):
        rl = load_config(GRPOConfig, preset_path(method), chain_sum.method_overrides[method])
        assert rl.latent.num_latent_steps == rl.latent.max_latent_steps == 7


def test_overlapping_eval_is_refused(chain_sum):
    ex = Example("1 2 3 4 5 6 7 8", [], "6")
    with pytest.raises(ValueError, match="held out"):
        check_disjoint(chain_sum, [ex], [ex])


def test_unknown_suite_task_or_method_is_a_clear_error_that_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="unknown suite task.*chain_sum"):
        run_bench(tmp_path / "b", quick=True, methods=["grpo"], tasks=["nope"])
    with pytest.raises(ValueError, match="unknown method 'grpoo'"):
        run_bench(tmp_path / "b", quick=True, methods=["grpoo"], tasks=["chain_sum"])
    assert not (tmp_path / "b").exists()


def test_a_second_bench_run_into_the_same_folder_adds_its_rows(tmp_path, monkeypatch):
    """Same settings: the earlier run's other rows (and samples) stay, a re-run row replaces its own; other
    settings are refused and leave the folder as it was."""
    import latentrl.bench as bench

    acc = {"grpo": 0.5, "hrpo": 0.6}
    monkeypatch.setattr(bench, "eval_checkpoint", lambda label, path, task, **kw: _row(label, task.name, 0.1, 9.0))
    monkeypatch.setattr(bench, "run_method", lambda name, task, out, **kw: _row(name, task.name, acc[name], 9.0))
    run_bench(tmp_path, quick=True, methods=["grpo"], tasks=["chain_sum"])
    acc["grpo"] = 0.55
    rows = run_bench(tmp_path, quick=True, methods=["hrpo", "grpo"], tasks=["chain_sum"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [(r["method"], r["pass_at_1"]) for r in saved] == [(r["method"], r["pass_at_1"]) for r in rows] == [
        ("nocot_sft", 0.1), ("cot_sft", 0.1), ("grpo", 0.55), ("hrpo", 0.6)]
    assert len(json.loads((tmp_path / "samples.json").read_text())) == 4
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(ValueError, match="other settings"):
        run_bench(tmp_path, quick=True, methods=["grpo"], tasks=["chain_sum"], seed=1)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def _row(method: str, task: str, acc: float, positions: float) -> dict:
    return {"method": method, "task": task, "init": "cot_sft", "pass_at_1": acc, "pass_at_k": None, "k": 4,
            "mean_reasoning_positions": positions, "mean_latent_positions": 0.0, "train_wall_s": 1.0, "n_eval": 100,
            "samples": [{"prompt": "p", "completion": "c", "answer": "a", "correct": 0.0}]}


def test_the_latent_inits_get_their_own_row_before_rl(tmp_path, monkeypatch):
    """A method that starts from a latent init brings that init's row (scored with its reader's operator, thought
    check included) into the table, so every RL row is read against its start; token-only methods bring none."""
    import latentrl.bench as bench

    monkeypatch.setattr(bench, "eval_checkpoint", lambda label, path, task, **kw: _row(label, task.name, 0.1, 9.0))
    monkeypatch.setattr(bench, "run_method", lambda name, task, out, **kw: _row(name, task.name, 0.5, 9.0))
    rows = run_bench(tmp_path, quick=True, methods=["coconut_grpo", "latent_rl"], tasks=["chain_sum"], k=0,
                     num_eval=40)
    init = {r["method"]: r for r in rows}["coconut_sft"]  # chain_sum-coconut: 93 % on 1,000 held-out problems
    assert init["init"] == "shipped checkpoint" and init["mean_latent_positions"] == 7.0
    assert init["pass_at_1"] >= 0.8 and init["thought_dependence"]["drop_swap"] >= 0.5
    assert [r["method"] for r in rows] == ["nocot_sft", "cot_sft", "coconut_sft", "coconut_grpo", "latent_rl"]
    assert "coconut_sft" in (tmp_path / "results.md").read_text()
    rows = run_bench(tmp_path / "tokens", quick=True, methods=["grpo"], tasks=["chain_sum"], k=0, num_eval=40)
    assert [r["method"] for r in rows] == ["nocot_sft", "cot_sft", "grpo"]


def test_write_results_keeps_tasks_apart(tmp_path):
    """Two tasks: the table and samples name the task of every row, the plot gets one panel per task."""

    rows = [_row("cot_sft", "chain_sum", 0.7, 49.0), _row("grpo", "chain_sum", 0.75, 49.0),
            _row("cot_sft", "icot_mult_4x4", 0.4, 46.0), _row("grpo", "icot_mult_4x4", 0.5, 46.0)]
    rows[1].update(pass_at_k=0.9, pass_at_k_temperature=0.5, sampled_pass_at_1=0.625)
    write_results(tmp_path, rows)
    table = (tmp_path / "results.md").read_text()
    assert "| grpo | icot_mult_4x4 | cot_sft | 100 | 50.0 ± 5.0 | — | — |" in table  # binomial SE: sqrt(.25/100)
    assert "| grpo | chain_sum | cot_sft | 100 | 75.0 ± 4.3 | 90.0 ± 3.0 (4, 0.5) | 62.5 | 49.0 |" in table
    assert [(r["method"], r["task"]) for r in json.loads((tmp_path / "samples.json").read_text())] == \
        [(r["method"], r["task"]) for r in rows]
    assert all("samples" not in r for r in json.loads((tmp_path / "results.json").read_text()))
    wide = matplotlib.image.imread(tmp_path / "accuracy_vs_length.png").shape[1]
    write_results(tmp_path, rows[:2])
    assert matplotlib.image.imread(tmp_path / "accuracy_vs_length.png").shape[1] < wide  # one panel fewer


def test_a_shipped_latent_init_replaces_the_built_one(chain_sum, tmp_path):
    from latentrl.assets import available_models, model_path
    from latentrl.bench import build_init

    if "chain_sum-coconut" not in available_models():
        pytest.skip("chain_sum-coconut not shipped")
    assert build_init("coconut_sft", chain_sum, tmp_path, quick=True) == model_path("chain_sum-coconut")
    if "chain_sum-superposition" in available_models():
        assert build_init("superposition_sft", chain_sum, tmp_path, quick=False) == model_path("chain_sum-superposition")
    assert not (tmp_path / "inits").exists()  # nothing was built


def test_icot_rl_presets_think_as_many_thoughts_as_the_shipped_init():
    """coconut_grpo / latent_rl / dlr on icot read the thought count from the shipped init's latent_init.json."""
    import json

    from latentrl.assets import available_models, model_path, recorded_num_thoughts
    from latentrl.bench import suite_tasks

    assert recorded_num_thoughts("no-such-model") is None
    if "icot_mult_4x4-coconut" not in available_models():
        pytest.skip("icot_mult_4x4-coconut not shipped")
    n = json.loads((model_path("icot_mult_4x4-coconut") / "latent_init.json").read_text())["num_thoughts"]
    icot = suite_tasks()["icot_mult_4x4"]
    for method in ("coconut_grpo", "latent_rl"):
        rl = load_config(GRPOConfig, preset_path(method), icot.method_overrides[method])
        assert rl.latent.num_latent_steps == rl.latent.max_latent_steps == n
    assert icot.method_overrides["dlr"] == [f"dlr.num_latent_steps={n}"]
