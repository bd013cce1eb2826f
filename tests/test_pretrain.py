"""`latentrl pretrain` on a minuscule config, locating the real data, and the shipped checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from latentrl.assets import available_models, model_path
from latentrl.config import ConfigError, load_config
from latentrl.data import format_icot_line, load_icot, make_examples
from latentrl.data.paths import PACKAGED_DATA, find_shared_data
from latentrl.data.provenance import TrainDraw, read_train_draws
from latentrl.eval import evaluate
from latentrl.model import LatentModel
from latentrl.pretrain import (
    PretrainConfig,
    default_real_eval_path,
    pretrain,
    pretrain_main,
)

TINY = [
    "num_train_examples=64", "num_eval_examples=6", "num_eval_during_training=4", "real_eval_slice=3",
    "model.hidden_size=16", "model.intermediate_size=32", "model.num_hidden_layers=1", "model.num_attention_heads=2",
    "model.num_key_value_heads=1", "model.max_position_embeddings=96",
    "cot.max_steps=3", "cot.per_device_train_batch_size=8", "cot.warmup_steps=1", "cot.eval_steps=2",
    "cot.max_new_positions=12", "no_cot.max_steps=2", "no_cot.per_device_train_batch_size=8",
    "cot.disable_tqdm=true", "no_cot.disable_tqdm=true",
]


def write_real_file(path: Path, n: int = 5) -> Path:
    """A stand-in for the real iCoT file: iCoT lines written from a different seed than the run's."""
    path.write_text("".join(format_icot_line(ex) + "\n" for ex in make_examples("icot_mult", n, seed=123)))
    return path


def test_pretrain_minuscule_run_gives_loadable_checkpoints(tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    real = write_real_file(tmp_path / "valid.txt")
    argv = ["--real-eval", str(real), f"output_dir={out}", "name=tiny", *TINY]
    assert pretrain_main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert (out / "curves.png").stat().st_size > 0
    assert results["command"].startswith("latentrl pretrain --real-eval")
    assert set(results["models"]) == {"cot", "no_cot"}
    n_real = len(load_icot(real))
    for mode, folder in (("cot", "tiny-cot"), ("no_cot", "tiny-nocot")):
        d = out / folder
        for name in ("config.json", "model.safetensors", "tokenizer.json", "training_args.json", "results.json",
                     "metrics.jsonl", "curves.png", "latentrl_latent_tokens.json"):
            assert (d / name).is_file(), name
        entry = results["models"][mode]
        assert entry["steps"] == (3 if mode == "cot" else 2)
        assert entry["eval_generated"]["n"] == 6 and entry["eval_real"]["n"] == n_real
        assert entry["eval_real_slice"]["n"] == min(3, n_real)
        args = json.loads((d / "training_args.json").read_text())
        assert args["sft_config"]["mode"] == mode and args["command"] == results["command"]
        pc = args["pretrain_config"]  # the draw it trained on, for the bench to keep RL prompts off it
        assert read_train_draws(d) == [TrainDraw(pc["task"], 64, 6, pc["seed"], pc["difficulty"])]
        lm = LatentModel.from_pretrained(d)
        assert lm.latent_ids is not None
        ids = lm.tokenizer.convert_tokens_to_ids(["<|start-latent|>", "<|latent|>", "<|end-latent|>"])
        assert [lm.latent_ids.start, lm.latent_ids.latent, lm.latent_ids.end] == ids
        assert lm.vocab_size == len(lm.tokenizer)
        text = "5 6 3 2 * 7 4 3 4 || 5 5 5 6 1 + 0 ( 1 ) #### 5"
        assert lm.tokenizer.decode(lm.tokenizer(text)["input_ids"]) == text
        assert lm.model.config.hidden_size == 16 and lm.model.config.model_type == "qwen2"
    # the CoT model saw the periodic evals; no_cot (eval_steps default 100 > 2 steps) only the final one
    cot_metrics = [json.loads(line) for line in (out / "tiny-cot" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in cot_metrics if "eval/pass_at_1" in r] == [2, 3]


def test_pretrain_is_reproducible(tmp_path):
    torch.set_num_threads(1)
    runs = []
    for i in range(2):
        cfg = load_config(PretrainConfig, None, [f"output_dir={tmp_path / str(i)}", "modes=cot", "real_eval=null",
                                                 "task=chain_sum", "difficulty={length: 3}", *TINY])
        res = pretrain(cfg)
        runs.append((res["models"]["cot"]["final_train_loss"],
                     (tmp_path / str(i) / "chain_sum-cot" / "model.safetensors").read_bytes()))
    assert runs[0] == runs[1]


def test_pretrain_resume_continues_an_interrupted_run(tmp_path, killed_in_step):
    """Killed during the CoT model's step 3 (checkpoints every step): --resume continues it from checkpoint-2 to
    the weights of an uninterrupted run, then trains the no-CoT model; a second --resume keeps both as they are."""
    import latentrl.optimizer_steps as step_loop  # the engine whose optimizer step is killed

    torch.set_num_threads(1)

    def config(out):
        return load_config(PretrainConfig, None, [f"output_dir={out}", "real_eval=null", "task=chain_sum",
                                                  "difficulty={length: 3}", "cot.save_steps=1", *TINY])

    whole = pretrain(config(tmp_path / "whole"))
    with killed_in_step(step_loop, 3):
        pretrain(config(tmp_path / "cut"))
    with pytest.raises(ConfigError, match="already holds a run"):  # without --resume the folder is refused
        pretrain(config(tmp_path / "cut"))
    resumed = pretrain(config(tmp_path / "cut"), resume=True)
    for folder in ("chain_sum-cot", "chain_sum-nocot"):
        assert (tmp_path / "cut" / folder / "model.safetensors").read_bytes() == (
            tmp_path / "whole" / folder / "model.safetensors").read_bytes(), folder
    assert resumed["models"]["cot"]["final_train_loss"] == whole["models"]["cot"]["final_train_loss"]
    again = pretrain(config(tmp_path / "cut"), resume=True)  # nothing left to train: both models kept
    assert again["models"]["no_cot"]["eval_generated"] == resumed["models"]["no_cot"]["eval_generated"]


def test_config_sections_and_errors():
    cfg = load_config(PretrainConfig, None, ["no_cot.max_steps=5", "task=chain_sum"])
    # a section built from overrides gets the class defaults (mode 'cot'); pretrain forces the right mode
    assert cfg.sft_config("no_cot").mode == "no_cot" and cfg.sft_config("no_cot").max_steps == 5
    assert cfg.sft_config("cot").output_dir.endswith("chain_sum-cot")
    with pytest.raises(ConfigError, match="task"):
        PretrainConfig(task="sudoku")
    with pytest.raises(ConfigError, match="hidden_size"):
        load_config(PretrainConfig, None, ["model.hidden_size=30", "model.num_attention_heads=4"])
    with pytest.raises(FileNotFoundError, match="real_eval"):
        pretrain(PretrainConfig(real_eval="/no/such/file.txt", output_dir="/tmp/latentrl-never-written"))


def test_real_eval_file_is_found_upward_and_by_env(tmp_path, monkeypatch):
    data = tmp_path / "shared" / "data" / "icot_mult_4x4"
    data.mkdir(parents=True)
    write_real_file(data / "valid.txt")
    deep = tmp_path / "checkouts" / "main" / "src"
    deep.mkdir(parents=True)
    monkeypatch.delenv("LATENTRL_SHARED_DATA", raising=False)
    assert find_shared_data(deep) == tmp_path / "shared" / "data"
    monkeypatch.setenv("LATENTRL_SHARED_DATA", str(tmp_path / "shared" / "data"))
    assert default_real_eval_path("icot_mult", {"digits": 4}) == data / "valid.txt"
    assert default_real_eval_path("icot_mult", {"digits": 4, "digits_b": 5}) is None
    assert default_real_eval_path("icot_mult", {"digits": 7}) is None
    assert default_real_eval_path("chain_sum", {}) is None
    # without the variable, the copies shipped in the package are found, whatever lies beside the checkout
    monkeypatch.delenv("LATENTRL_SHARED_DATA")
    assert default_real_eval_path("icot_mult", {"digits": 4}) == PACKAGED_DATA / "icot_mult_4x4" / "valid.txt"
    assert default_real_eval_path("icot_mult", {"digits": 5}) == PACKAGED_DATA / "icot_mult_5x5" / "valid.txt"


def test_model_path_names_the_available_models():
    with pytest.raises(FileNotFoundError, match="available models"):
        model_path("no-such-model")


# ------------------------------------------------------------------------------------------------ shipped models
SHIPPED = available_models()
# checkpoints written by `latentrl pretrain` (results.json beside them); the latent inits of
# scripts/train_latent_init.py carry latent_init.json instead and are checked in test_latent_inits.py
PRETRAINED = [n for n in SHIPPED if (model_path(n) / "results.json").is_file()]


def test_the_default_models_are_shipped():
    assert "icot_mult_4x4-cot" in SHIPPED and "icot_mult_4x4-nocot" in SHIPPED
    assert model_path().name == "icot_mult_4x4-cot"
    for name in SHIPPED:  # each a small checkpoint: ~2.1 MB for 0.53M fp32 parameters (2 layers), ~4.5 MB for
        # the 4-layer icot latent init with its training curve
        size = sum(f.stat().st_size for f in model_path(name).rglob("*") if f.is_file())
        assert size < 5 * 2**20, (name, size)
    assert len(SHIPPED) <= 10  # the wheel stays a few tens of MB: ship a new model only when a benchmark needs it
    for name in SHIPPED:  # every shipped folder says how it was made
        assert (model_path(name) / "results.json").is_file() or (model_path(name) / "latent_init.json").is_file()


@pytest.mark.parametrize("name", PRETRAINED)
def test_shipped_checkpoint_reaches_its_recorded_accuracy(name):
    torch.set_num_threads(1)
    path = model_path(name)
    results = json.loads((path / "results.json").read_text())
    lm = LatentModel.from_pretrained(path)
    assert lm.latent_ids is not None  # every later method can start from it
    checks = [("generated", make_examples(results["task"], results["eval_generated_slice"]["n"],
                                          results["seed"], **results["difficulty"]))]
    real_file = default_real_eval_path(results["task"], results["difficulty"])
    if "eval_real_slice" in results and real_file is not None:
        checks.append(("real", load_icot(real_file)[: results["eval_real_slice"]["n"]]))
    for split, examples in checks:
        recorded = results[f"eval_{split}_slice"]
        got = evaluate(lm, examples, max_new_positions=results["max_new_positions"], batch_size=64)
        assert got.n == recorded["n"]
        # same weights, same greedy decoding: the count may only move by float noise of another BLAS/thread count
        assert abs(round(got.pass_at_1 * got.n) - recorded["correct"]) <= 1, (split, got.pass_at_1, recorded)


def test_shipped_cot_beats_no_cot_and_leaves_headroom():
    tasks = {n.removesuffix("-nocot") for n in SHIPPED if n.endswith("-nocot")}
    assert tasks, "no CoT / no-CoT pair shipped"
    for task in tasks:
        cot = json.loads((model_path(f"{task}-cot") / "results.json").read_text())
        nocot = json.loads((model_path(f"{task}-nocot") / "results.json").read_text())
        split = "eval_real" if "eval_real" in cot else "eval_generated"
        assert cot[split]["pass_at_1"] - nocot[split]["pass_at_1"] >= 0.30, task
        assert 0.30 <= cot[split]["pass_at_1"] <= 0.80, task  # room for RL to show an improvement


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").glob("pretrain_*.yaml")),
                         ids=lambda p: p.stem)
def test_every_pretrain_config_loads_and_builds_its_data(path):
    """The shipped `latentrl pretrain` configs are valid and name a task whose generator takes their difficulty."""
    cfg = load_config(PretrainConfig, path)
    assert cfg.modes and cfg.output_dir.startswith("runs/")
    ex = make_examples(cfg.task, 2, cfg.seed, **cfg.difficulty)
    assert len(ex) == 2 and all(e.steps for e in ex)


def test_pretrain_resume_trains_a_finished_model_on_to_a_larger_max_steps(tmp_path, capsys):
    """A finished CoT model asked for more steps on --resume continues from its last checkpoint (its first results
    kept beside it); without a checkpoint to continue from it is a clear error, not a silent no-op."""
    torch.set_num_threads(1)

    def config(out, *extra):
        return load_config(PretrainConfig, None, [f"output_dir={out}", "modes=cot", "real_eval=null", "task=chain_sum",
                                                  "difficulty={length: 3}", *TINY, *extra])

    first = pretrain(config(tmp_path / "a", "cot.save_steps=1"))
    steps = first["models"]["cot"]["steps"]
    more = pretrain(config(tmp_path / "a", "cot.save_steps=1", f"cot.max_steps={steps + 2}"), resume=True)
    assert more["models"]["cot"]["steps"] == steps + 2
    kept = json.loads((tmp_path / "a" / "chain_sum-cot" / f"results_at_step_{steps}.json").read_text())
    assert kept["steps"] == steps and f"finished at {steps} steps: continuing" in capsys.readouterr().err
    pretrain(config(tmp_path / "b", "cot.save_steps=0"))
    with pytest.raises(ConfigError, match="kept no checkpoint to continue from"):
        pretrain(config(tmp_path / "b", "cot.save_steps=0", f"cot.max_steps={steps + 2}"), resume=True)
    pretrain(config(tmp_path / "c", f"cot.save_steps={steps - 1}"))  # the newest checkpoint is a step short
    with pytest.raises(ConfigError, match=f"finished at {steps} steps but its newest checkpoint is checkpoint-"):
        pretrain(config(tmp_path / "c", f"cot.save_steps={steps - 1}", f"cot.max_steps={steps + 2}"), resume=True)
