"""Run folders never mix or get silently replaced (issue 15, item 3), and resumes start from an intact checkpoint of
the same run or say exactly why not (item 5): GRPO/DLR trainers, the SFT trainers, pretrain and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from latentrl.checkpoint import latest_checkpoint, list_checkpoints
from latentrl.cli import main
from latentrl.config import ConfigError, GRPOConfig
from latentrl.data import make_examples
from latentrl.logger import read_metrics
from latentrl.methods.dlr import DLRConfig
from latentrl.methods.dlr.prefix_trainer import DLRPrefixTrainer
from latentrl.rl.trainer import GRPOTrainer
from latentrl.testing import char_sum_reward, tiny_chain_sum_model, word_count_reward

ROOT = Path(__file__).resolve().parents[1]



def examples(n=16):
    return make_examples("chain_sum", n, seed=0, length=3)



def config(out, **kw):
    base = dict(model_name_or_path="tiny", output_dir=str(out), max_steps=2, per_device_train_batch_size=8,
                num_generations=4, max_completion_length=8, learning_rate=1e-2, save_steps=1, save_total_limit=None,
                report_to=["jsonl"])
    base.update(kw)
    return GRPOConfig(**base)


def trainer(out, reward=word_count_reward, lm=None, **kw):
    return GRPOTrainer(config(out, **kw), lm or tiny_chain_sum_model(), examples(), reward_funcs=[reward])


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes): what must not change."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def params(t):
    return torch.cat([p.detach().flatten() for p in t.model.parameters()])


@pytest.fixture
def old_run(tmp_path):
    """A finished 2-step GRPO run (checkpoints 1 and 2, metrics, run_config) and its final weights."""
    out = tmp_path / "run"
    t = trainer(out, report_to=["jsonl", "tensorboard"])
    t.train()
    assert (out / "tb").is_dir()
    return out, params(t)


def failing_reward(prompts, completions, **kw):
    raise RuntimeError("reward server down")


# ------------------------------------------------------------------------------------------ never mix runs


def test_a_new_run_into_an_existing_run_is_refused_and_writes_nothing(old_run):
    out, _ = old_run
    before = snapshot(out)
    t = trainer(out, max_steps=1)
    with pytest.raises(ConfigError, match=r"already holds a run \(checkpoint-1, checkpoint-2, metrics.jsonl, "
                                          r"run_config.json, tb\).*--resume.*overwrite_output_dir=true"):
        t.train()
    assert snapshot(out) == before
    assert t.global_step == 0  # refused before any step


def test_the_same_trainer_may_train_on_in_its_own_run(tmp_path):
    t = trainer(tmp_path / "run", max_steps=1)
    t.train()
    t.args.max_steps = 2
    t.train()  # continues its own run in memory: not a new run
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2]


def test_a_folder_with_only_other_files_is_not_a_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "my_config.yaml").write_text("learning_rate: 0.01\n")
    trainer(out, max_steps=1).train()
    assert (out / "my_config.yaml").read_text() == "learning_rate: 0.01\n"
    assert [r["step"] for r in read_metrics(out)] == [1]


@pytest.mark.parametrize("how, case", [("resume", "failing_first_step"), ("resume", "no_step_left"),
                                       ("resume", "max_steps_0"), ("overwrite", "failing_first_step"),
                                       ("overwrite", "max_steps_0")])
def test_a_run_that_does_no_step_leaves_the_existing_run_untouched(old_run, case, how):
    out, _ = old_run
    before = snapshot(out)
    kw = {"resume_from_checkpoint": "latest"} if how == "resume" else {"overwrite_output_dir": True}
    # resumed, step 3 is the first one it runs; max_steps=2 leaves a resumed run (at step 2) nothing to do
    kw["max_steps"] = {"failing_first_step": 3, "no_step_left": 2, "max_steps_0": 0}[case]
    if case == "max_steps_0":  # no length at all (HF: max_steps <= 0 needs num_train_epochs): refused at build
        with pytest.raises(ConfigError, match="max_steps=0"):
            trainer(out, **kw)
    else:
        t = trainer(out, reward=failing_reward if case == "failing_first_step" else word_count_reward, **kw)
        if case == "failing_first_step":
            with pytest.raises(RuntimeError, match="reward server down"):
                t.train()
        else:
            assert t.train() == []
    assert snapshot(out) == before  # run_config.json, metrics.jsonl, tb/ and both checkpoints byte for byte


def test_overwrite_output_dir_replaces_the_whole_old_run(old_run):
    out, _ = old_run
    (out / "notes.txt").write_text("mine")
    t = trainer(out, max_steps=1, overwrite_output_dir=True, learning_rate=5e-3)
    t.train()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-1", "metrics.jsonl", "notes.txt", "run_config.json"]
    assert [r["step"] for r in read_metrics(out)] == [1]  # no steps of the old run appended
    assert json.loads((out / "run_config.json").read_text())["learning_rate"] == 5e-3
    assert not any(p.name.startswith(".run.replaced") for p in out.parent.iterdir())
    # a later --resume continues the new run, not the old one's checkpoint-2
    r = trainer(out, max_steps=2, learning_rate=5e-3, resume_from_checkpoint="latest")
    r.train()
    assert [r_["step"] for r_ in read_metrics(out)] == [1, 2]


def test_overwrite_output_dir_refuses_to_delete_its_own_starting_model(old_run):
    out, _ = old_run
    before = snapshot(out)
    t = trainer(out, max_steps=1, overwrite_output_dir=True, model_name_or_path=str(out / "checkpoint-2"))
    with pytest.raises(ConfigError, match=r"overwrite_output_dir=true would delete the starting model .*checkpoint-2"):
        t.train()
    assert snapshot(out) == before


def test_overwrite_output_dir_in_the_working_directory(old_run, monkeypatch):
    out, _ = old_run
    (out / "notes.txt").write_text("mine")
    monkeypatch.chdir(out)  # output_dir "." cannot be renamed away: its run entries are cleared in place
    trainer(".", max_steps=1, overwrite_output_dir=True).train()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-1", "metrics.jsonl", "notes.txt", "run_config.json"]
    assert [r["step"] for r in read_metrics(out)] == [1]


def test_dlr_trainer_refuses_an_existing_run(tmp_path):
    out = tmp_path / "dlr"
    kw = dict(method="dlr_prefix", max_steps=1, max_completion_length=8, report_to=["jsonl"])
    DLRPrefixTrainer(config(out, **kw), tiny_chain_sum_model(), examples(8), reward_funcs=[char_sum_reward],
               dlr=DLRConfig(num_latent_steps=3, latent_dim=4, assistant_hidden_size=16)).train()
    before = snapshot(out)
    again = DLRPrefixTrainer(config(out, **kw), tiny_chain_sum_model(), examples(8), reward_funcs=[char_sum_reward],
                       dlr=DLRConfig(num_latent_steps=3, latent_dim=4, assistant_hidden_size=16))
    with pytest.raises(ConfigError, match="already holds a run"):
        again.train()
    assert snapshot(out) == before


def test_sft_trainers_refuse_an_existing_run(tmp_path):
    from latentrl.sft.coconut import CoconutConfig, train_coconut
    from latentrl.sft.cot import CoTSFTConfig, train_sft

    out = tmp_path / "sft"
    sft = dict(max_steps=1, disable_tqdm=True, eval_steps=0, output_dir=str(out))
    train_sft(CoTSFTConfig(**sft), tiny_chain_sum_model(), examples(4))
    before = snapshot(out)
    with pytest.raises(ConfigError, match="already holds a run.*overwrite_output_dir") as info:
        train_sft(CoTSFTConfig(**sft), tiny_chain_sum_model(), examples(4))
    assert "--resume" not in str(info.value)  # SFT runs cannot be resumed: the message does not offer it
    with pytest.raises(ConfigError, match="already holds a run"):
        train_coconut(CoconutConfig(max_latent_stage=1, num_epochs=2, max_steps=1, disable_tqdm=True,
                                    output_dir=str(out)), tiny_chain_sum_model(), examples(4))
    assert snapshot(out) == before
    train_sft(CoTSFTConfig(**sft, overwrite_output_dir=True, learning_rate=1e-3), tiny_chain_sum_model(), examples(4))
    assert [r["step"] for r in read_metrics(out)] == [1]
    assert json.loads((out / "run_config.json").read_text())["learning_rate"] == 1e-3


def test_pretrain_refuses_an_existing_run_before_generating_data(tmp_path, monkeypatch):
    from latentrl import pretrain as pretrain_module
    from latentrl.pretrain import PretrainConfig, pretrain

    out = tmp_path / "pre"
    (out / "chain_sum-cot").mkdir(parents=True)
    (out / "chain_sum-cot" / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    before = snapshot(out)
    monkeypatch.setattr(pretrain_module, "_resolve_real_eval", lambda cfg: pytest.fail("data were prepared"))
    with pytest.raises(ConfigError, match="chain_sum-cot.*already holds a run"):
        pretrain(PretrainConfig(task="chain_sum", output_dir=str(out), modes=["cot"], real_eval=None))
    assert snapshot(out) == before


# ------------------------------------------------------------------------------------------ the CLI


def cli_train(out, *extra):
    return main(["train", "--config", str(ROOT / "configs/cpu/grpo.yaml"), f"output_dir={out}", "max_steps=1",
                 "dataset=chain_sum", "num_train_examples=8", "per_device_train_batch_size=8", "num_generations=4",
                 "max_completion_length=8", "save_steps=1",
                 "report_to=[jsonl]", *extra])


def test_a_checkpoint_copied_out_of_its_run_folder_is_scored_with_the_runs_settings(tmp_path, capsys):
    """Each checkpoint holds the run's settings (run_config.json), so `latentrl eval` of a copy made elsewhere
    ("best/") reads it with the run's method and temperature, not the defaults."""
    import shutil

    init = tmp_path / "init"
    tiny_chain_sum_model().save_pretrained(init)
    run = tmp_path / "run"
    assert cli_train(run, f"model_name_or_path={init}", "temperature=0.7") == 0
    assert json.loads((run / "checkpoint-1" / "run_config.json").read_text()) == json.loads(
        (run / "run_config.json").read_text())
    shutil.copytree(run / "checkpoint-1", tmp_path / "best")
    capsys.readouterr()
    assert main(["eval", "--model", str(tmp_path / "best"), "--data", "chain_sum", "--num", "2", "--k", "1"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["settings"] == str(tmp_path / "best" / "run_config.json") and out["temperature"] == 0.7


def test_cli_refuses_an_existing_run_before_loading_the_model(old_run, capsys):
    out, _ = old_run
    before = snapshot(out)
    # a model that does not exist: the refusal comes first, so nothing was loaded
    assert cli_train(out, "model_name_or_path=/nonexistent/model") == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "Traceback" not in err
    assert snapshot(out) == before


def test_cli_coconut_sft_refuses_the_folder_it_would_save_into(tmp_path, capsys):
    out = tmp_path / "coconut"
    out.mkdir()
    (out / "config.json").write_text("{}")  # a model saved by an earlier coconut-sft
    assert main(["coconut-sft", "model_name_or_path=/nonexistent/model", "dataset=chain_sum",
                 f"output_dir={out}"]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_demo_refuses_an_existing_run_folder(old_run):
    from latentrl.demo import run_demo

    out, _ = old_run
    with pytest.raises(ConfigError, match="already holds a run"):
        run_demo(steps=1, num_eval=1, out_dir=str(out))


# ------------------------------------------------------------------------------------------ resume


def damage(ckpt: Path, how: str) -> str:
    """Damage checkpoint `ckpt` as a full disk or an interrupted copy would; returns the file named in the error."""
    if how == "truncated_weights":
        data = (ckpt / "model.safetensors").read_bytes()
        (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
        return "model.safetensors is truncated"
    if how == "missing_weights":
        (ckpt / "model.safetensors").unlink()
        return "model.safetensors is missing"
    if how == "corrupt_optimizer":  # bytes overwritten in place, the size unchanged
        data = bytearray((ckpt / "optimizer.pt").read_bytes())
        data[100:4000] = bytes(3900)
        (ckpt / "optimizer.pt").write_bytes(bytes(data))
        return r"optimizer.pt is corrupt \(its bytes changed since it was saved: CRC-32 mismatch\)"
    (ckpt / "config.json").unlink()
    return "config.json is missing"


@pytest.mark.parametrize("how", ["truncated_weights", "missing_weights", "missing_config", "corrupt_optimizer"])
@pytest.mark.parametrize("legacy", [False, True], ids=["", "legacy_marker"])
def test_resume_skips_a_damaged_last_checkpoint_with_a_warning(old_run, how, legacy, capsys):
    out, final = old_run
    if legacy and how == "corrupt_optimizer":
        pytest.skip("a marker without sizes and checksums cannot show bytes changed in place")
    if legacy:  # a checkpoint saved before the completion marker listed its files
        (out / "checkpoint-2" / "COMPLETE").write_text('{"step": 2}\n')
    cause = damage(out / "checkpoint-2", how)
    if legacy and how == "truncated_weights":
        cause = "model.safetensors is truncated"
    r = trainer(out, resume_from_checkpoint="latest")
    with pytest.warns(UserWarning, match=rf"checkpoint-2 is damaged: {cause}.*falling back to checkpoint-1"):
        r.train()
    assert f"resuming from {out / 'checkpoint-1'} (step 1 of 2)" in capsys.readouterr().err
    assert r.global_step == 2
    torch.testing.assert_close(params(r), final, atol=0, rtol=0)  # step 2 redone: the same weights
    assert [m["step"] for m in read_metrics(out)] == [1, 2]


def test_resume_from_a_named_damaged_checkpoint_names_the_file_and_the_intact_one(old_run):
    out, _ = old_run
    damage(out / "checkpoint-2", "truncated_weights")
    with pytest.raises(ValueError, match=r"cannot resume from .*checkpoint-2: model.safetensors is truncated "
                                         r"\(\d+ bytes, saved with \d+\); the newest intact checkpoint there is "
                                         r".*checkpoint-1"):
        trainer(out, resume_from_checkpoint=str(out / "checkpoint-2")).train()


def test_a_resume_under_another_launch_says_the_global_batch_or_precision_changes(tmp_path, monkeypatch):
    """Each checkpoint records the processes and precision it was trained with (not in the run's settings: the
    launcher sets them); a resume launched otherwise says so and names the launch that continues the same run."""
    out = tmp_path / "run"
    monkeypatch.setattr(GRPOTrainer, "_launch", lambda self: {"num_processes": 2, "mixed_precision": "bf16"})
    trainer(out, max_steps=1).train()
    monkeypatch.undo()
    state = json.loads((out / "checkpoint-1" / "trainer_state.json").read_text())
    assert (state["num_processes"], state["mixed_precision"]) == (2, "bf16")
    with pytest.warns(UserWarning, match=r"num_processes 2 -> 1, mixed_precision bf16 -> no: the run goes on with "
                                         r"another global batch and precision .*torchrun --nproc_per_node 2"):
        trainer(out, max_steps=2, resume_from_checkpoint="latest").train()
    again = tmp_path / "same"
    trainer(again, max_steps=1).train()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        trainer(again, max_steps=2, resume_from_checkpoint="latest").train()  # the same launch: not a word


def test_resume_with_nothing_intact_says_so(old_run):
    out, _ = old_run
    for step in (1, 2):
        damage(out / f"checkpoint-{step}", "missing_config")
    with pytest.warns(UserWarning) as caught:
        with pytest.raises(FileNotFoundError, match="no intact checkpoint in .* start the run again over it with "
                                                    "overwrite_output_dir=true"):
            trainer(out, resume_from_checkpoint="latest").train()
    assert sorted(str(w.message).split(" is damaged")[0].rsplit("/", 1)[-1] for w in caught) == [
        "checkpoint-1", "checkpoint-2"]
    assert all("config.json is missing" in str(w.message) and "no intact checkpoint is left" in str(w.message)
               for w in caught)


def test_resume_with_another_method_names_both(old_run):
    from latentrl.config import LatentConfig

    out, _ = old_run
    before = snapshot(out)
    hrpo = trainer(out, method="hrpo", resume_from_checkpoint="latest", beta=0.0,
                   latent=LatentConfig(operator="hrpo_gate", answer_delimiter="####"))
    with pytest.raises(ConfigError, match=r"trained with method 'grpo', this run's method is 'hrpo'.*method=grpo"):
        hrpo.train()
    assert snapshot(out) == before


def test_resume_with_another_starting_model_is_refused(old_run):
    out, _ = old_run
    with pytest.raises(ConfigError, match=r"started from model_name_or_path='tiny', this run names 'other'"):
        trainer(out, model_name_or_path="other", resume_from_checkpoint="latest").train()


def test_a_checkpoint_of_another_run_folder_is_refused_and_both_runs_stay_as_they_were(old_run, tmp_path):
    out, _ = old_run
    other = tmp_path / "other"
    trainer(other, max_steps=3).train()
    before, before_other = snapshot(out), snapshot(other)
    with pytest.raises(ValueError, match=r"checkpoint of the run in .*run, not of this run's output_dir .*other.*"
                                         r"set output_dir=.*run.*model_name_or_path=.*checkpoint-1"):
        trainer(other, max_steps=4, resume_from_checkpoint=str(out / "checkpoint-1")).train()
    assert snapshot(out) == before and snapshot(other) == before_other


def test_resuming_an_older_checkpoint_sets_the_newer_line_aside_instead_of_mixing_it_in(tmp_path):
    """The helper's case: a run at step 4 resumed from checkpoint-2 to step 3 once kept checkpoint-4 of the old
    line as the folder's "latest" (and pruning dropped the resumed one). Now the newer checkpoints and the metrics so
    far move to superseded-after-checkpoint-2/, and the folder holds one line: checkpoints 1-3, metrics 1-3."""
    out = tmp_path / "run"
    trainer(out, max_steps=4).train()
    old = snapshot(out)
    with pytest.warns(UserWarning, match=r"resuming from checkpoint-2.*checkpoint-3, checkpoint-4 and a copy of "
                                         r"metrics.jsonl moved to .*superseded-after-checkpoint-2"):
        trainer(out, max_steps=3, resume_from_checkpoint=str(out / "checkpoint-2")).train()
    aside = out / "superseded-after-checkpoint-2"
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert [m["step"] for m in read_metrics(out) if "loss" in m] == [1, 2, 3]
    for name, data in old.items():  # every file of the old line is still there, byte for byte
        kept = aside / name if name.startswith(("checkpoint-3/", "checkpoint-4/", "metrics.jsonl")) else out / name
        if not name.startswith(("checkpoint-3/", "metrics.jsonl", "run_config.json")):
            assert kept.read_bytes() == data, name
    assert (aside / "metrics.jsonl").read_bytes() == old["metrics.jsonl"]
    assert latest_checkpoint(out).name == "checkpoint-3"
    with pytest.raises(ConfigError, match="already holds a run"):  # the set-aside line is part of the run
        trainer(out, max_steps=1).train()


def test_the_sft_loop_sets_newer_checkpoints_aside_too(tmp_path):
    from latentrl.sft.coconut import CoconutConfig, train_coconut

    def run(**kw):
        cfg = CoconutConfig(max_latent_stage=1, stage_advance="fixed", epochs_per_stage=1, num_epochs=2,
                            per_device_train_batch_size=4, output_dir=str(tmp_path / "c"), save_steps=1, save_total_limit=None,
                            disable_tqdm=True, eval_strategy="no", seed=0, **kw)
        train_coconut(cfg, tiny_chain_sum_model(), examples(8))

    run()
    steps = [p.name for p in list_checkpoints(tmp_path / "c")]
    assert len(steps) >= 3
    with pytest.warns(UserWarning, match=f"resuming from {steps[0]}.*moved to .*superseded-after-{steps[0]}"):
        run(resume_from_checkpoint=str(tmp_path / "c" / steps[0]))
    assert sorted(p.name for p in (tmp_path / "c" / f"superseded-after-{steps[0]}").iterdir()) == sorted(
        steps[1:] + ["metrics.jsonl"])


def test_a_supervised_resume_checks_it_is_the_same_run(old_run, tmp_path):
    """The SFT loop records its trainer and starting model in each checkpoint and refuses another's, as the RL
    trainers do (a Coconut run on icot resumed with a chain_sum model once trained on without a word)."""
    from latentrl.sft.coconut import CoconutConfig, train_coconut

    def run(out, **kw):
        cfg = CoconutConfig(max_latent_stage=1, stage_advance="fixed", epochs_per_stage=1, num_epochs=1,
                            per_device_train_batch_size=4, output_dir=str(out), save_steps=1, disable_tqdm=True,
                            eval_strategy="no", seed=0, **kw)
        train_coconut(cfg, tiny_chain_sum_model(), examples(8))

    run(tmp_path / "c", model_name_or_path="tiny")
    state = json.loads((latest_checkpoint(tmp_path / "c") / "trainer_state.json").read_text())
    assert state["method"] == "coconut" and state["model_name_or_path"] == "tiny"
    before = snapshot(tmp_path / "c")
    with pytest.raises(ConfigError, match=r"started from model_name_or_path='tiny', this run names 'other'"):
        run(tmp_path / "c", model_name_or_path="other", resume_from_checkpoint="latest")
    assert snapshot(tmp_path / "c") == before
    out, _ = old_run  # a GRPO run's folder
    with pytest.raises(ConfigError, match=r"written by the 'grpo' trainer, this run is 'coconut'; resume it with "
                                          r"that trainer"):
        run(out, resume_from_checkpoint="latest")


def test_resume_from_checkpoint_true_and_false_read_as_hf_trainer_means_them(old_run, capsys):
    out, _ = old_run
    with pytest.raises(ValueError, match=r"resume_from_checkpoint='false' names no checkpoint: leave it unset"):
        trainer(out, resume_from_checkpoint="false").train()
    t = trainer(out, resume_from_checkpoint="true", max_steps=2)  # "true": the newest checkpoint, as `True`
    t.train()
    err = capsys.readouterr().err
    assert f"resuming from {out / 'checkpoint-2'} (step 2 of 2)" in err
    assert "nothing to train: the checkpoint is at step 2 and max_steps is 2; raise max_steps" in err
    assert t.global_step == 2


def test_an_optimizer_that_does_not_fit_is_explained(old_run):
    out, _ = old_run
    state = json.loads((out / "checkpoint-1" / "trainer_state.json").read_text())
    for key in ("method", "model_name_or_path"):  # as a checkpoint saved before runs recorded them
        state.pop(key)
    (out / "checkpoint-1" / "trainer_state.json").write_text(json.dumps(state))
    (out / "checkpoint-1" / "COMPLETE").write_text('{"step": 1}\n')
    (out / "run_config.json").unlink()
    t = trainer(out, resume_from_checkpoint=str(out / "checkpoint-1"))
    t.optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))]})
    with pytest.raises(ValueError, match=r"optimizer state in .*does not fit this run's trainable parameters"):
        t.train()


def test_cli_resume_checks_the_run_first_and_says_where_it_starts(tmp_path, capsys):
    init = tmp_path / "init"
    tiny_chain_sum_model().save_pretrained(init)
    run = tmp_path / "cli"
    assert cli_train(run, f"model_name_or_path={init}") == 0
    capsys.readouterr()
    # another starting model: refused before any model loads (this one does not even exist)
    assert cli_train(run, "model_name_or_path=/nonexistent/model", "max_steps=2", "--resume") == 2
    err = capsys.readouterr().err
    assert f"started from model_name_or_path='{init}'" in err and "Traceback" not in err
    assert cli_train(run, f"model_name_or_path={init}", "max_steps=2", "--resume") == 0
    assert f"resuming from {run / 'checkpoint-1'} (step 1 of 2)" in capsys.readouterr().err
    assert [r["step"] for r in read_metrics(run)] == [1, 2]


# ------------------------------------------------------------------------------------------ one process per run


def test_a_run_folder_in_use_is_refused_by_every_trainer(old_run, tmp_path):
    """While one process trains into a folder (holds its lock), a resume or another run there is refused before
    anything is written; the lock file goes when the run ends, and a folder it created for a run that wrote
    nothing goes too."""
    from latentrl.run_dir import LOCK_FILE, run_lock
    from latentrl.sft.cot import CoTSFTConfig, train_sft
    from latentrl.testing import tiny_latent_model

    out, _ = old_run
    before = snapshot(out)
    with run_lock(out):
        assert (out / LOCK_FILE).read_text().startswith("pid ")
        with pytest.raises(ConfigError, match=r"in use by a run that is still going \(pid \d+"):
            trainer(out).train(resume_from_checkpoint=True)
        with pytest.raises(ConfigError, match="in use"):
            with run_lock(out):
                pass
        with pytest.raises(ConfigError, match="in use"):
            train_sft(CoTSFTConfig(output_dir=str(out), max_steps=1, disable_tqdm=True),
                      tiny_latent_model("qwen2"), examples())
    assert snapshot(out) == before  # the lock file is gone, nothing else changed
    trainer(out).train(resume_from_checkpoint=True)  # free again
    fresh = tmp_path / "never_written"
    with run_lock(fresh):
        assert fresh.is_dir()
    assert not fresh.exists()


def test_a_killed_run_does_not_block_its_resume(tmp_path):
    """The lock dies with its process (SIGKILL included): the stale lock file does not refuse the resume."""
    import subprocess
    import sys

    from latentrl.run_dir import LOCK_FILE, run_lock

    out = tmp_path / "run"
    code = ("import sys, time; from latentrl.run_dir import run_lock\n"
            f"with run_lock({str(out)!r}):\n    print('locked', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match="in use"):
            with run_lock(out):
                pass
    finally:
        proc.kill()
        proc.wait()
    assert (out / LOCK_FILE).exists()  # left behind by the killed process
    with run_lock(out):
        pass


def test_a_folder_that_cannot_be_locked_trains_unguarded_with_a_warning(tmp_path, monkeypatch):
    """Some network file systems refuse flock (ENOLCK): the run goes on, with a warning, and leaves no lock file."""
    import errno

    import latentrl.run_dir as run_dir

    def no_locks(handle, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_dir.fcntl, "flock", no_locks)
    out = tmp_path / "run"
    out.mkdir()
    with pytest.warns(UserWarning, match="not guarded"):
        with run_dir.run_lock(out):
            pass
    assert not (out / run_dir.LOCK_FILE).exists()


def test_cli_resume_continues_with_the_runs_own_settings(tmp_path, capsys):
    """The YAML and the overrides of the first command are not needed again: a resume reads the run's
    run_config.json (here learning_rate=1e-5, not the preset's), changes only what its command line sets
    (max_steps), and refuses to change what the restored optimizer state fixes."""
    init = tmp_path / "init"
    tiny_chain_sum_model().save_pretrained(init)
    run = tmp_path / "cli"
    assert cli_train(run, f"model_name_or_path={init}", "learning_rate=1e-5") == 0
    capsys.readouterr()
    assert main(["train", "--config", str(ROOT / "configs/cpu/grpo.yaml"), f"output_dir={run}", "max_steps=2",
                 "--resume"]) == 0
    assert f"the run's settings from {run / 'run_config.json'}, with output_dir" in capsys.readouterr().err
    saved = json.loads((run / "run_config.json").read_text())
    assert saved["learning_rate"] == 1e-5 and saved["max_steps"] == 2 and saved["num_generations"] == 4
    assert [r["step"] for r in read_metrics(run)] == [1, 2]
    before = snapshot(run)
    assert cli_train(run, "max_steps=3", "learning_rate=5e-5", "--resume") == 2
    assert "--resume cannot change learning_rate 1e-05 -> 5e-05" in capsys.readouterr().err
    assert cli_train(run, "max_steps=3", "learning_rate=5e-5", "resume_from_checkpoint=latest") == 2  # either spelling
    assert "--resume cannot change learning_rate" in capsys.readouterr().err
    for change in ("lora.enabled=true", "lora.alpha=64"):  # the adapter a LoRA checkpoint holds was built with them
        assert cli_train(run, "max_steps=3", change, "--resume") == 2
        assert "the LoRA adapter restored from the checkpoint was built with it" in capsys.readouterr().err
    assert snapshot(run) == before
    assert main(["train", "--resume", f"output_dir={run}", "max_steps=3"]) == 0  # no --config: the run's is enough
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3]
    assert json.loads((run / "run_config.json").read_text())["learning_rate"] == 1e-5


@pytest.mark.parametrize("content, cause", [("{bad", "cannot read the run's settings"),
                                             ("[1]", "does not hold a run's settings")])
def test_a_damaged_run_config_is_a_clear_error_for_resume_and_eval(tmp_path, capsys, content, cause):
    init = tmp_path / "init"
    tiny_chain_sum_model().save_pretrained(init)
    run = tmp_path / "cli"
    assert cli_train(run, f"model_name_or_path={init}") == 0
    (run / "run_config.json").write_text(content)
    capsys.readouterr()
    assert cli_train(run, "max_steps=2", "--resume") == 2
    err = capsys.readouterr().err
    assert cause in err and "run_config.json" in err and "Traceback" not in err
    (run / "checkpoint-1" / "run_config.json").write_text(content)  # the checkpoint's own copy, which eval reads
    assert main(["eval", "--model", str(run / "checkpoint-1"), "--data", "chain_sum", "--num", "2"]) == 2
    err = capsys.readouterr().err
    assert cause in err and "Traceback" not in err


def test_an_output_dir_that_cannot_be_a_folder_is_a_clear_error(tmp_path):
    """A file in the way, or a parent that refuses new folders, is a ConfigError naming output_dir (not a bare
    OSError traceback), and nothing is created."""
    from latentrl.run_dir import run_lock

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        with run_lock(blocker):
            pass
    with pytest.raises(ConfigError, match="cannot be created"):
        with run_lock(blocker / "run"):  # a file as the parent folder
            pass
    assert blocker.read_text() == "x"
