"""Paired greedy Pass@1 difference of two superposition inits on the same first 500 held-out problems of a task,
scored with latent_grpo's operator as the bench scores it.

    PYTHONPATH=src python docs/bench/chain_sum/superposition_init/paired.py TASK MODEL_A MODEL_B
"""

import json
import sys
from pathlib import Path

from rl_from_init import greedy_correct  # this folder's script: greedy Pass@1 per problem, latent_grpo's operator

from latentrl.bench import suite_tasks
from latentrl.config import GRPOConfig, load_config
from latentrl.eval import mean_se

REPO = Path(__file__).resolve().parents[4]
task = suite_tasks()[sys.argv[1]]
evals = task.eval_examples(500)
correct = []
for path in sys.argv[2:4]:
    cfg = load_config(GRPOConfig, REPO / "configs/cpu/latent_grpo.yaml",
                      [f"model_name_or_path={path}", f"dataset={task.dataset}", "report_to=[none]",
                       f"max_completion_length={task.max_completion_length}", "output_dir=/tmp/paired"])
    correct.append(greedy_correct(Path(path), cfg, evals))
d = [b - a for a, b in zip(*correct)]
m, n = sum(d) / len(d), len(d)
print(json.dumps({"a": sys.argv[2], "b": sys.argv[3], "n": n, "pass_a": sum(correct[0]) / n,
                  "pass_b": sum(correct[1]) / n, "b_minus_a": m,
                  "se": mean_se(d)}))
