"""The SFT control for an RL-over-init gain (issue #16 item 4): a superposition init continued by more SFT, scored as
`rl_from_init.py` scores an RL checkpoint — greedily, with Latent-GRPO's operator (configs/cpu/latent_grpo.yaml), on
the task's first 500 held-out problems, paired with the init on the same problems.

    OMP_NUM_THREADS=1 PYTHONPATH=src python docs/bench/rl_prompts/inits_2026-12-07/paired_sft_control.py \
        TASK INIT MODEL [MODEL ...]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from latentrl import bench
from latentrl.assets import resolve_model
from latentrl.config import GRPOConfig, load_config
from latentrl.eval import mean_se

REPO = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(REPO / "docs/bench/chain_sum/superposition_init"))
from rl_from_init import N, greedy_correct  # noqa: E402  (scored exactly as the RL rows are)


def main() -> None:
    task_name, init, models = sys.argv[1], sys.argv[2], sys.argv[3:]
    torch.set_num_threads(1)
    task = bench.suite_tasks()[task_name]
    cfg = load_config(GRPOConfig, REPO / "configs/cpu/latent_grpo.yaml",
                      [f"dataset={task.dataset}", f"max_completion_length={task.max_completion_length}",
                       "report_to=[none]", "beta=0"])
    evals = task.eval_examples(N)
    before = greedy_correct("latent_grpo", Path(resolve_model(init)), cfg, evals)
    for m in models:
        after = greedy_correct("latent_grpo", Path(resolve_model(m)), cfg, evals)
        d = [a - b for a, b in zip(after, before)]
        print(json.dumps({"task": task_name, "init": init, "model": m, "init_pass_at_1": sum(before) / N,
                          "pass_at_1": sum(after) / N, "minus_init": sum(d) / N, "minus_init_se": mean_se(d)}),
              flush=True)


if __name__ == "__main__":
    main()
