"""`latentrl plot` refuses unknown metrics without touching the output and draws no empty panels; `latentrl train`
checks the method, the reward functions and the data before it loads the model, so a typo costs seconds."""

from __future__ import annotations

import json

import pytest

import latentrl.cli
from latentrl.cli import main
from latentrl.logger import plot_metrics, read_metrics


@pytest.fixture
def run(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    lines = [{"step": s, "reward": s / 10, "embeds_ratio": 0.99, "completions/mean_length": 5 + s,
              "clip_ratio/low": 0.0, "clip_ratio/high": None, "kl": None} for s in range(1, 6)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return folder


def test_unknown_key_exits_non_zero_lists_the_logged_keys_and_overwrites_nothing(run, tmp_path, capsys):
    out = tmp_path / "m.png"
    out.write_bytes(b"an earlier plot")
    assert main(["plot", str(run), "--keys", "reward", "rewrad", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "rewrad" in err and "did you mean 'reward'" in err and "embeds_ratio" in err and "completions/mean_length" in err
    assert out.read_bytes() == b"an earlier plot"
    assert main(["plot", str(run), "--keys", "eval/*", "--out", str(out)]) == 2  # a glob that matches nothing
    assert "eval/*" in capsys.readouterr().err and out.read_bytes() == b"an earlier plot"
    assert main(["plot", str(run), "--keys", "kl", "--out", str(out)]) == 2  # logged, but never a number
    assert "no finite value" in capsys.readouterr().err and out.read_bytes() == b"an earlier plot"


def test_default_keys_draw_only_what_was_logged(run, capsys):
    assert main(["plot", str(run)]) == 0
    out = capsys.readouterr().out
    assert (run / "metrics.png").stat().st_size > 0
    assert "panels: reward, completions/mean_length" in out and "not logged: eval/pass_at_1, kl" in out


def test_plot_of_a_path_that_does_not_exist_says_so(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "nonexist")]) == 2
    assert "nonexist does not exist" in capsys.readouterr().err


def test_plot_out_names_an_image_and_prints_the_file_it_wrote(run, tmp_path, capsys):
    before = (run / "metrics.jsonl").read_bytes()
    with pytest.raises(SystemExit) as exit_:  # not a figure: argparse refuses it, the file is untouched
        main(["plot", str(run), "--out", str(run / "metrics.jsonl")])
    assert exit_.value.code == 2
    assert "is not an image file name: end it in .png" in capsys.readouterr().err
    assert (run / "metrics.jsonl").read_bytes() == before
    assert main(["plot", str(run), "--out", str(tmp_path / "curves")]) == 0  # no suffix: .png, and it says so
    assert capsys.readouterr().out.startswith(f"{tmp_path / 'curves.png'}  (panels:")
    assert (tmp_path / "curves.png").stat().st_size > 0


@pytest.mark.parametrize("command", [["eval", "--model", "chain_sum-cot", "--data", "chain_sum"],
                                     ["inspect", "--model", "chain_sum-cot", "--method", "grpo", "--prompts", "x"]])
@pytest.mark.parametrize("value", ["nan", "-1", "inf", "hot"])
def test_a_temperature_that_is_not_a_finite_number_at_least_0_is_refused(command, value, capsys, no_model_loading):
    with pytest.raises(SystemExit) as exit_:
        main([*command[:-2], "--temperature", value, *command[-2:]])
    assert exit_.value.code == 2
    assert "argument --temperature:" in capsys.readouterr().err


def test_plot_panels_expands_globs_to_plottable_keys_only(run):
    from latentrl.logger import plot_panels

    records = read_metrics(run)
    assert plot_panels(records, ["reward", "clip_ratio/*"]) == (["reward", "clip_ratio/low"], [])
    assert plot_panels(records, ["reward", "kl", "eval/pass_at_1"], missing="skip") == (
        ["reward"], ["kl", "eval/pass_at_1"])
    with pytest.raises(ValueError, match="no metric 'absent' in the log; metrics with values: reward, embeds_ratio"):
        plot_panels(records, ["absent"])
    with pytest.raises(ValueError, match="none of"):
        plot_metrics(run / "metrics.jsonl", run / "x.png", ["absent"], missing="skip")
    assert not (run / "x.png").exists()


@pytest.fixture
def no_model_loading(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the error")

    monkeypatch.setattr(latentrl.cli, "build_model_for", refuse)
    monkeypatch.setattr(latentrl.cli, "load_model", refuse)


@pytest.mark.parametrize("override, message", [
    ("dataset=data/missing_file.jsonl", "missing_file.jsonl"),
    ("dataset=chain_summ", "did you mean 'chain_sum'"),  # a task-name typo: no 20 s of hub retries
    ("dataset=runs/some/folder", "no such file or folder"),  # a path (2+ slashes) is never a hub id
    ("eval_dataset=missing_eval.jsonl", "missing_eval.jsonl"),
    ("method=hrpoo", "unknown method 'hrpoo'"),
])
def test_train_checks_method_and_data_before_loading_the_model(tmp_path, monkeypatch, capsys, no_model_loading,
                                                              override, message):
    monkeypatch.chdir(tmp_path)
    args = ["train", "model_name_or_path=some-org/a-huge-model", "output_dir=run", "max_steps=1", override]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


def test_coconut_sft_and_inspect_check_data_and_method_before_loading_the_model(tmp_path, monkeypatch, capsys,
                                                                               no_model_loading):
    monkeypatch.chdir(tmp_path)
    assert main(["coconut-sft", "model_name_or_path=some-org/a-huge-model", "dataset=missing.jsonl"]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    assert main(["inspect", "--model", "icot_mult_4x4-cot", "--method", "hrpoo", "--prompts", "1 2 ||"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'hrpoo' (did you mean 'hrpo'?)" in err and "Traceback" not in err  # the config refuses it
    monkeypatch.setenv("LATENTRL_DEBUG", "1")
    with pytest.raises(ValueError, match="unknown method 'hrpoo'"):  # the traceback, on request
        main(["inspect", "--model", "icot_mult_4x4-cot", "--method", "hrpoo", "--prompts", "1 2 ||"])


def test_an_error_raised_inside_a_library_keeps_its_traceback(monkeypatch, capsys):
    """Bad input is one line (a message latentrl wrote for the user); an error raised inside torch (here a shape
    mismatch standing in for a bug in a command) is not disguised as one: it propagates with its traceback."""
    import torch

    def buggy(ns):
        return int(torch.zeros(2) @ torch.zeros(3))  # RuntimeError from inside torch

    def bad_input(ns):
        from latentrl.methods import get_method

        return get_method("hrpoo")  # a ValueError raised by latentrl's own code

    monkeypatch.setitem(latentrl.cli.COMMANDS, "plot", (buggy, "plot"))
    with pytest.raises(RuntimeError, match="inconsistent tensor size"):
        main(["plot", "runs/x"])
    monkeypatch.setitem(latentrl.cli.COMMANDS, "plot", (bad_input, "plot"))
    assert main(["plot", "runs/x"]) == 2
    err = capsys.readouterr().err
    assert "error: unknown method 'hrpoo'" in err and "Traceback" not in err


def test_ctrl_c_and_unwritable_output_paths_are_one_line_messages(monkeypatch, capsys, tmp_path):
    """Ctrl-C ends with exit code 130 and, for training commands, says how to continue; an output path that is an
    existing file is one line, before any model loads."""
    def interrupted(ns):
        raise KeyboardInterrupt

    monkeypatch.setitem(latentrl.cli.COMMANDS, "train", (interrupted, "train"))
    assert main(["train", "--config", "configs/cpu/grpo.yaml"]) == 130
    assert "interrupted; the checkpoints it wrote are kept" in capsys.readouterr().err
    monkeypatch.setitem(latentrl.cli.COMMANDS, "plot", (interrupted, "plot"))
    assert main(["plot", "runs/x"]) == 130
    assert "--resume" not in capsys.readouterr().err
    monkeypatch.undo()
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    assert main(["bench", "--quick", "--methods", "grpo", "--tasks", "chain_sum", "--out", str(taken)]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and str(taken) in err and "Traceback" not in err and taken.read_text() == "mine"


def test_a_damaged_model_folder_is_a_one_line_error(capsys, tmp_path):
    from latentrl.testing import tiny_latent_model

    folder = tmp_path / "ckpt"
    tiny_latent_model("qwen2", ["1", "2", "+", "="], seed=0, hidden=16).save_pretrained(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert main(["eval", "--model", str(folder), "--data", "chain_sum", "--num", "2", "--k", "0"]) == 2
    err = capsys.readouterr().err
    assert "could not load the model folder" in err and "damaged or incomplete" in err and "Traceback" not in err


@pytest.mark.parametrize("damage, message", [
    ("drop_layer", r"do not fit its config.json: \d+ of the model's tensors are not in them \(model.layers.1"),
    ("wider_config", r"do not fit its config.json"),
    ("no_tokenizer", r"no tokenizer in .*tokenizer.json"),
    ("unknown_type", r"could not load the model in .*model type `nonsense_arch`"),
])
def test_a_model_folder_whose_parts_do_not_belong_together_is_refused(damage, message, tmp_path):
    """Weights missing from a folder would be initialised at random (transformers only logs it) and scored; a folder
    without tokenizer files once loaded a 1-token tokenizer and failed far away."""
    import json as json_

    from safetensors.torch import load_file, save_file

    from latentrl.model import LatentModel
    from latentrl.testing import tiny_latent_model

    folder = tmp_path / "ckpt"
    tiny_latent_model("qwen2", ["1", "2", "+", "="], seed=0, hidden=16).save_pretrained(folder)
    if damage == "drop_layer":
        state = load_file(str(folder / "model.safetensors"))
        save_file({k: v for k, v in state.items() if "layers.1." not in k}, str(folder / "model.safetensors"),
                  metadata={"format": "pt"})
    elif damage in ("wider_config", "unknown_type"):
        config = json_.loads((folder / "config.json").read_text())
        change = {"intermediate_size": 2 * config["intermediate_size"]} if damage == "wider_config" else {
            "model_type": "nonsense_arch"}
        (folder / "config.json").write_text(json_.dumps({**config, **change}))
    else:
        for f in folder.iterdir():
            if f.name.startswith(("tokenizer", "special_tokens", "vocab")):
                f.unlink()
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        LatentModel.from_pretrained(folder)


def test_train_says_when_the_data_holds_fewer_rows_than_num_train_examples(tmp_path, capsys):
    from latentrl.cli import load_train_data_and_record
    from latentrl.config import GRPOConfig

    data = tmp_path / "two.jsonl"
    data.write_text('{"question": "1 1", "answer": "2"}\n{"question": "2 2", "answer": "4"}\n')
    rows, _ = load_train_data_and_record(GRPOConfig(model_name_or_path="chain_sum-cot", dataset=str(data),
                                                    num_train_examples=200, output_dir=str(tmp_path / "run")))
    assert len(rows) == 2
    assert f"training prompts: 2 rows of {data} (num_train_examples=200; the data has no more)" in capsys.readouterr().err
