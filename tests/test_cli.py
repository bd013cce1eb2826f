"""The command line: one-line errors for bad input, and `latentrl eval` on a saved checkpoint."""

import json

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
