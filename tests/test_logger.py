import json
import math

import numpy as np
import pytest
import torch

from latentrl.logger import MetricsLogger, plot_metrics, progress, read_metrics


def strict_json(line):
    def reject(const):
        raise ValueError(f"non-standard JSON constant {const}")

    return json.loads(line, parse_constant=reject)


def tb_scalars(tb_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_jsonl_lines_are_strict_json_with_nan_and_tensors(tmp_path):
    with MetricsLogger(tmp_path, report_to=["jsonl"], run_config={"lr": 1e-5}) as log:
        log.log(1, {"reward": 0.5, "kl": float("nan"), "loss": torch.tensor(2.0), "n": np.int64(3)})
        log.log(2, {"reward": float("inf"), "note": "ok"})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    recs = [strict_json(line) for line in lines]
    assert recs[0] == {"step": 1, "reward": 0.5, "kl": None, "loss": 2.0, "n": 3}
    assert recs[1] == {"step": 2, "reward": None, "note": "ok"}
    assert read_metrics(tmp_path) == recs
    assert json.loads((tmp_path / "run_config.json").read_text()) == {"lr": 1e-5}
    assert not (tmp_path / "tb").exists()
    with pytest.raises(RuntimeError):
        log.log(3, {"reward": 1.0})


def test_lines_are_flushed_before_close(tmp_path):
    log = MetricsLogger(tmp_path, report_to=["jsonl"])
    log.log(1, {"reward": 1.0})
    # readable by another reader while the logger is still open (as after a crash)
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"step": 1, "reward": 1.0}]
    log.close()


def test_truncate_after_on_resume_and_partial_line_repair(tmp_path):
    with MetricsLogger(tmp_path, report_to=["jsonl", "tensorboard"]) as log:
        for step in range(1, 6):
            log.log(step, {"reward": step / 10})
    # simulate a crash in the middle of writing a line
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "rew')

    with MetricsLogger(tmp_path, report_to=["jsonl", "tensorboard"], resume_step=3) as log:
        log.log(4, {"reward": 0.99})
        dropped_none = log.truncate_after(10)
    assert dropped_none == 0
    recs = read_metrics(tmp_path)
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert recs[-1]["reward"] == 0.99
    # TensorBoard: the events after step 3 from the first run are purged; step 4 is the resumed value
    scalars = dict(tb_scalars(tmp_path / "tb", "reward"))
    assert sorted(scalars) == [1, 2, 3, 4]
    assert scalars[4] == pytest.approx(0.99)


def test_tensorboard_event_files_hold_scalars(tmp_path):
    with MetricsLogger(tmp_path, run_config={"method": "grpo"}) as log:
        log.log(1, {"reward": 0.25, "completions/mean_length": 12})
        log.log(2, {"reward": 0.75, "completions/mean_length": 10})
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert tb_scalars(tmp_path / "tb", "reward") == [(1, 0.25), (2, 0.75)]
    assert [v for _, v in tb_scalars(tmp_path / "tb", "completions/mean_length")] == [12.0, 10.0]


def test_report_to_validation_and_none(tmp_path):
    with pytest.raises(ValueError, match="wandb"):
        MetricsLogger(tmp_path, report_to=["wandb"])
    with MetricsLogger(tmp_path / "quiet", report_to=["none"]) as log:
        assert log.log(1, {"x": 1.0}) == {"step": 1, "x": 1.0}
    assert not (tmp_path / "quiet" / "metrics.jsonl").exists()


def test_plot_metrics_writes_png(tmp_path):
    with MetricsLogger(tmp_path, report_to=["jsonl"]) as log:
        for step in range(1, 41):
            log.log(step, {"reward": math.sin(step / 5), "clip_ratio/low": 0.01, "clip_ratio/high": float("nan")})
    out = plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "plots" / "curves.png", ["reward", "clip_ratio/*", "absent"],
                       missing="skip")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with pytest.raises(ValueError, match="no metric 'absent'"):  # by default a key never logged is an error
        plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "plots" / "other.png", ["reward", "absent"])
    assert not (tmp_path / "plots" / "other.png").exists()


def test_progress_is_silent_in_ci(monkeypatch, capsys):
    monkeypatch.setenv("CI", "true")
    with progress(10, "rollouts") as bar:
        for _ in range(10):
            bar.update(1)
    assert bar.disable is True
    assert capsys.readouterr().err == ""
    monkeypatch.delenv("CI")
    bar = progress(3, "x", disable=False)
    assert bar.disable is False and bar.total == 3
    bar.close()


def test_console_line_names_the_step_and_the_logged_metrics():
    from latentrl.logger import console_line

    line = console_line(10, 40, {"reward": 0.5125, "loss": float("nan"), "kl": 4e-4, "completions/mean_length": 46.0,
                                 "other": 3.0}, seconds_per_step=1.234)
    assert line == "step 10/40 | reward 0.5125 | loss nan | kl 0.0004 | len 46 | 1.23 s/step"
    assert console_line(1, 2, {}) == "step 1/2"
