"""An RL method from its shipped latent init (issue #16 item 4): the bench's `run_method(method)` on a suite task
(its init is the task's shipped one, e.g. `chain_sum-superposition` for latent_grpo; the preset's steps, seed 0), then
the init and the RL checkpoint scored greedily on the same first 500 held-out problems with the method's own
operator, and their paired difference.

    OMP_NUM_THREADS=1 PYTHONPATH=src python docs/bench/chain_sum/superposition_init/rl_from_init.py OUT_DIR \
        [task=chain_sum|icot_mult_4x4] [method=latent_grpo|coconut_grpo|latent_rl|grpo|...] [seed=0] [key=value ...]

(key=value: overrides of the method's preset, e.g. latent.noise_scale=0.1)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from latentrl import bench
from latentrl.config import GRPOConfig, load_config
from latentrl.eval import evaluate, mean_se
from latentrl.methods import get_method
from latentrl.model import LatentModel

N = 500


def greedy_correct(method: str, path: Path, cfg: GRPOConfig, evals) -> list[float]:
    model = LatentModel.from_pretrained(path)
    return evaluate(model, evals, **get_method(method).build(model, cfg).eval_kwargs(cfg)).correct


def main() -> None:
    out, args = Path(sys.argv[1]), sys.argv[2:]
    task_name = next((a.split("=", 1)[1] for a in args if a.startswith("task=")), "chain_sum")
    method = next((a.split("=", 1)[1] for a in args if a.startswith("method=")), "latent_grpo")
    seed = int(next((a.split("=", 1)[1] for a in args if a.startswith("seed=")), 0))  # RL run and prompt draw
    overrides = [a for a in args if not a.startswith(("task=", "method=", "seed="))]
    torch.set_num_threads(1)
    task = bench.suite_tasks()[task_name]
    init_path = bench.build_init(get_method(method).init, task, out, quick=False)  # the shipped one if any
    row = bench.run_method(method, task, out, quick=False, seed=seed, k=4, num_eval=N, overrides=overrides)
    run_dir = Path(row["run_dir"])
    cfg = load_config(GRPOConfig, run_dir / "run_config.json")
    ckpt = max(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    evals = task.eval_examples(N)
    init = greedy_correct(method, init_path, cfg, evals)
    rl = greedy_correct(method, ckpt, cfg, evals)
    d = [a - b for a, b in zip(rl, init)]
    m = sum(d) / len(d)
    res = {"task": task.name, "method": method, "seed": seed, "overrides": overrides, "row": {k: v for k, v in row.items() if k != "samples"},
           "checkpoint": str(ckpt),
           "init_pass_at_1": sum(init) / N, "rl_pass_at_1": sum(rl) / N, "rl_minus_init": m,
           "rl_minus_init_se": mean_se(d)}
    (out / "rl_from_init.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
