"""docs/quickstart.md works as written: its Python blocks and its `latentrl train` / `latentrl eval` commands run.

The page's model is `my-model/` and its data `my_data.jsonl`; here `my-model/` is a tiny random-weight Qwen2 whose
word tokenizer covers the data file (written from the page's own `jsonl` block), and `configs/` links to the
repository's presets. The runs are a few steps long, as on the page.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest

from latentrl.cli import main
from latentrl.logger import read_metrics
from latentrl.testing import tiny_latent_model

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "quickstart.md"


def blocks(lang: str) -> list[str]:
    text = PAGE.read_text()
    return [m.group(1) for m in re.finditer(rf"^```{lang}\n(.*?)^```", text, re.S | re.M)]


def file_blocks() -> dict[str, str]:
    """The page's files (```lang file=NAME blocks): written into the working directory, as a reader would."""
    text = PAGE.read_text()
    return {m.group(1): m.group(2) for m in re.finditer(r"^```\w+ file=(\S+)\n(.*?)^```", text, re.S | re.M)}


def commands() -> list[str]:
    """The `latentrl train`, `eval` and `plot` command lines of the page's bash blocks, in order."""
    lines = [line.strip() for b in blocks("bash") for line in b.replace("\\\n", " ").splitlines()]
    return [line for line in lines if line.startswith(("latentrl train ", "latentrl eval ", "latentrl plot "))]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    (data_block,) = blocks("jsonl")
    (tmp_path / "my_data.jsonl").write_text(data_block)
    for name, content in file_blocks().items():
        (tmp_path / name).write_text(content)
    rows = [json.loads(line) for line in data_block.splitlines() if line.strip()]
    words = sorted({w for r in rows for text in [r["question"], r["answer"], *r.get("steps", [])] for w in text.split()})
    tiny_latent_model("qwen2", words, seed=0, hidden=32).save_pretrained(tmp_path / "my-model")
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # `reward_funcs=my_rewards.x` puts the working directory there
    monkeypatch.delitem(sys.modules, "my_rewards", raising=False)
    yield tmp_path
    sys.modules.pop("my_rewards", None)


def test_python_blocks_run_in_order(workdir):
    code = blocks("python")
    assert len(code) >= 5, "the quickstart lost its Python examples"
    namespace: dict = {"__name__": "quickstart"}
    for i, block in enumerate(code):
        try:
            exec(compile(block, f"{PAGE.name}:python-block-{i}", "exec"), namespace)
        except Exception as e:  # name the block, so a broken snippet is easy to find
            pytest.fail(f"python block {i} of {PAGE.name} raised {type(e).__name__}: {e}\n{block}")
    steps = [r["step"] for r in read_metrics(workdir / "runs/my-grpo")]
    assert steps == [1, 2, 3, 4, 5, 6], steps  # 4 steps, then resumed to 6
    assert (workdir / "runs/my-grpo/checkpoint-6").is_dir() and (workdir / "runs/my-grpo/curves.png").is_file()
    assert [r["step"] for r in read_metrics(workdir / "runs/my-hrpo")] == [1, 2, 3, 4]
    assert 0.0 <= namespace["result"].pass_at_1 <= 1.0


def test_cli_commands_run(workdir, capsys):
    cmds = commands()
    assert any(c.startswith("latentrl train ") and "--resume" in c for c in cmds)
    # the page's order is train, eval, then resume; run each as written
    for cmd in cmds:
        assert main(shlex.split(cmd)[1:]) == 0, f"`{cmd}` failed: {capsys.readouterr().err}"
    steps = [r["step"] for r in read_metrics(workdir / "runs/my-cli")]
    assert steps == [1, 2, 3, 4, 5, 6], steps
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert out and out[0]["n"] == 4 and out[0]["k"] == 2
    # TRL prompt rows, a reward function by import path, 2 epochs of 4 prompts at 2 prompts per step
    records = read_metrics(workdir / "runs/my-prompts")
    assert [r["step"] for r in records] == [1, 2, 3, 4] and "rewards/matches_solution/mean" in records[0]
    assert (workdir / "runs/my-cli/curves.png").stat().st_size > 0
