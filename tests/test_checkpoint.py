import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from latentrl.checkpoint import (
    COMPLETE_MARKER,
    atomic_write_text,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    save_model_into,
)


def make_training_state(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    for _ in range(3):
        model(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return model, opt, sched


def model_saver(model):
    return lambda path: torch.save(model.state_dict(), path / "model.pt")


def draws(gen=None):
    out = [random.random(), float(np.random.rand()), float(torch.rand(()))]
    if gen is not None:
        out.append(float(torch.rand((), generator=gen)))
    return out


def test_save_load_restores_optimizer_scheduler_rng_and_state(tmp_path):
    model, opt, sched = make_training_state()
    gen = torch.Generator().manual_seed(123)
    ckpt = save_checkpoint(
        tmp_path,
        7,
        save_model=model_saver(model),
        optimizer=opt,
        scheduler=sched,
        extra_state={"epoch": 2, "best": 0.5, "baseline": torch.arange(3.0), "generators": {"rollout": gen}},
    )
    assert ckpt == tmp_path / "checkpoint-7"
    assert (ckpt / COMPLETE_MARKER).is_file() and (ckpt / "model.pt").is_file()
    assert json.loads((ckpt / "trainer_state.json").read_text()) == {"step": 7, "epoch": 2, "best": 0.5}
    expected = draws(gen)  # what the run would have drawn right after saving

    # a fresh process-like state: different RNG, fresh optimizer/scheduler
    random.seed(999)
    np.random.seed(999)
    torch.manual_seed(999)
    gen2 = torch.Generator().manual_seed(5)
    model2 = torch.nn.Linear(4, 3)
    model2.load_state_dict(torch.load(ckpt / "model.pt"))
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0 / (1 + s))

    state = load_checkpoint(ckpt, optimizer=opt2, scheduler=sched2, generators={"rollout": gen2})
    assert state["step"] == 7 and state["epoch"] == 2 and state["best"] == 0.5
    assert torch.equal(state["baseline"], torch.arange(3.0))
    assert draws(gen2) == expected
    assert sched2.state_dict()["last_epoch"] == sched.state_dict()["last_epoch"] == 3
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    for p, p2 in zip(model.parameters(), model2.parameters()):
        s, s2 = opt.state[p], opt2.state[p2]
        assert torch.equal(s["exp_avg"], s2["exp_avg"]) and torch.equal(s["exp_avg_sq"], s2["exp_avg_sq"])
        assert float(s["step"]) == float(s2["step"]) == 3


def test_python_exception_mid_save_keeps_previous_checkpoint(tmp_path):
    model, opt, sched = make_training_state()
    good = save_checkpoint(tmp_path, 1, save_model=model_saver(model), optimizer=opt, scheduler=sched)
    before = {p.name: p.read_bytes() for p in good.iterdir()}

    def crashing_save(path):
        (path / "model.safetensors").write_bytes(b"half a model")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(tmp_path, 2, save_model=crashing_save, optimizer=opt, scheduler=sched)
    assert not (tmp_path / "checkpoint-2").exists()
    assert latest_checkpoint(tmp_path) == good
    assert {p.name: p.read_bytes() for p in good.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-1"]  # temp dir removed on a python error


def test_hard_crash_mid_save_leaves_only_tmp_dir_that_is_cleaned_up(tmp_path):
    # A real crash (no exception handling runs): the child process dies inside save_model.
    script = textwrap.dedent(
        f"""
        import os, torch
        from latentrl.checkpoint import save_checkpoint
        model = torch.nn.Linear(2, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        save = lambda p: torch.save(model.state_dict(), p / "model.pt")
        save_checkpoint({str(tmp_path)!r}, 1, save_model=save, optimizer=opt)
        def die(p):
            (p / "model.pt").write_bytes(b"partial")
            os._exit(3)
        save_checkpoint({str(tmp_path)!r}, 2, save_model=die, optimizer=opt)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "checkpoint-1" in names and "checkpoint-2" not in names
    assert any(n.startswith(".tmp-checkpoint-2-") for n in names)
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-1"

    # resuming cleans the leftover
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    state = load_checkpoint(tmp_path / "checkpoint-1", optimizer=opt)
    assert state["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]


def test_next_save_cleans_tmp_and_incomplete_dirs_are_ignored(tmp_path):
    model, opt, _ = make_training_state()
    save_checkpoint(tmp_path, 1, save_model=model_saver(model), optimizer=opt)
    (tmp_path / ".tmp-checkpoint-5-abc").mkdir()
    (tmp_path / ".tmp-checkpoint-5-abc" / "model.pt").write_bytes(b"junk")
    incomplete = tmp_path / "checkpoint-9"  # e.g. copied by hand or written by an older, non-atomic tool
    incomplete.mkdir()
    (incomplete / "model.pt").write_bytes(b"junk")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-1"
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        load_checkpoint(incomplete, optimizer=None)
    save_checkpoint(tmp_path, 2, save_model=model_saver(model), optimizer=opt)
    assert not (tmp_path / ".tmp-checkpoint-5-abc").exists()
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    assert latest_checkpoint(tmp_path / "does-not-exist") is None


def test_total_limit_prunes_oldest_never_newest(tmp_path):
    model, opt, _ = make_training_state()
    for step in (10, 20, 30, 40, 50):
        save_checkpoint(tmp_path, step, save_model=model_saver(model), optimizer=opt, total_limit=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-40", "checkpoint-50"]
    # the checkpoint just written survives even when it has a lower step than older ones
    save_checkpoint(tmp_path, 5, save_model=model_saver(model), optimizer=opt, total_limit=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-5"]
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())


def test_resave_same_step_replaces_it(tmp_path):
    model, opt, _ = make_training_state()
    save_checkpoint(tmp_path, 3, save_model=lambda p: (p / "w.txt").write_text("old"), optimizer=opt)
    save_checkpoint(tmp_path, 3, save_model=lambda p: (p / "w.txt").write_text("new"), optimizer=opt)
    assert (tmp_path / "checkpoint-3" / "w.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-3"]


def test_atomic_write_text(tmp_path):
    target = tmp_path / "sub" / "results.json"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert os.listdir(target.parent) == ["results.json"]


def test_damaged_newest_checkpoint_is_skipped_with_a_warning_naming_the_file(tmp_path):
    from latentrl.checkpoint import checkpoint_problem

    model, opt, sched = make_training_state()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, save_model=model_saver(model), optimizer=opt, scheduler=sched)
    listed = json.loads((tmp_path / "checkpoint-3" / COMPLETE_MARKER).read_text())["files"]
    assert set(listed) == {"model.pt", "optimizer.pt", "scheduler.pt", "rng_state.pt", "trainer_state.json"}
    assert all(checkpoint_problem(tmp_path / f"checkpoint-{s}") is None for s in (1, 2, 3))

    opt_file = tmp_path / "checkpoint-3" / "optimizer.pt"
    size = opt_file.stat().st_size
    opt_file.write_bytes(opt_file.read_bytes()[:10])  # a disk that filled up during a copy
    (tmp_path / "checkpoint-2" / "model.pt").unlink()
    with pytest.warns(UserWarning) as caught:
        assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-1"
    assert [str(w.message).split(": ", 1)[1] for w in caught] == [
        f"optimizer.pt is truncated (10 bytes, saved with {size}); falling back to checkpoint-1",
        "model.pt is missing; falling back to checkpoint-1",
    ]
    with pytest.raises(ValueError, match="cannot resume from .*checkpoint-3: optimizer.pt is truncated"):
        load_checkpoint(tmp_path / "checkpoint-3", optimizer=opt)
    # checkpoints written before the marker listed files: their safetensors headers are checked instead
    legacy = tmp_path / "checkpoint-1"
    (legacy / COMPLETE_MARKER).write_text(json.dumps({"step": 1}))
    from safetensors.torch import save_file

    save_file({"w": torch.ones(64)}, str(legacy / "model.safetensors"))
    assert checkpoint_problem(legacy) is None
    data = (legacy / "model.safetensors").read_bytes()
    (legacy / "model.safetensors").write_bytes(data[:-16])
    assert checkpoint_problem(legacy) == f"model.safetensors is truncated ({len(data) - 16} of {len(data)} bytes)"


def test_save_model_into_a_run_folder_moves_whole_files_in_with_the_config_last(tmp_path, monkeypatch):
    """The final model of a Coconut / pretrain run goes into the folder that holds its metrics and checkpoints: the
    other files stay, and a crash mid-save leaves no config.json beside half-written weights and no temporary
    folder."""
    run = tmp_path / "run"
    (run / "checkpoint-1").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1}\n')

    def save(path):
        (path / "model.safetensors").write_bytes(b"w" * 64)
        (path / "sub").mkdir()
        (path / "sub" / "adapter.bin").write_bytes(b"a")
        (path / "config.json").write_text("{}")

    moved = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (moved.append(Path(b).name), real_replace(a, b)))
    assert save_model_into(run, save) == run
    assert moved == ["model.safetensors", "adapter.bin", "config.json"]
    assert (run / "model.safetensors").read_bytes() == b"w" * 64 and (run / "sub" / "adapter.bin").is_file()
    assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n' and (run / "checkpoint-1").is_dir()
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-1", "config.json", "metrics.jsonl",
                                                      "model.safetensors", "sub"]

    def crash(path):
        (path / "config.json").write_text("{}")
        (path / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    other = tmp_path / "other"
    with pytest.raises(KeyboardInterrupt):
        save_model_into(other, crash)
    assert list(other.iterdir()) == []
