"""Sampled vs greedy accuracy of a latent init and its RL checkpoint, paired per problem (issue #16 item 4).

Latent-GRPO trains on rollouts with its operator's noise on and the answer sampled at the run's temperature, but
the bench scores greedy Pass@1 with the noise off. This scores both: for each of the first N held-out problems,
greedy correctness and the mean correctness of S sampled completions (noise on, the run's temperature), for the
init and for an RL checkpoint, and the paired differences ± their standard errors.

    OMP_NUM_THREADS=1 PYTHONPATH=src python docs/bench/rl_prompts/sampled_accuracy.py RL_RUN_DIR [N=500] [S=16]

RL_RUN_DIR is a run folder of `rl_from_init.py` (`.../runs/<method>-<task>`, with run_config.json and checkpoints);
the init is the run's `model_name_or_path`. Prints one JSON object.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from latentrl import bench
from latentrl.config import GRPOConfig, load_config
from latentrl.data.schema import as_rows
from latentrl.eval import evaluate, mean_se
from latentrl.methods import get_method
from latentrl.model import LatentModel


def per_problem(path: str | Path, cfg: GRPOConfig, rows: list[dict], samples: int) -> tuple[list[float], list[float]]:
    """(greedy correctness, mean sampled correctness) per problem: `latentrl.eval.evaluate` with k = `samples` at
    the run's temperature (batch 256: 256 // samples problems per sampled batch)."""
    model = LatentModel.from_pretrained(path)
    kw = get_method(cfg.method).build(model, cfg).eval_kwargs(cfg)
    res = evaluate(model, rows, k=samples, temperature=cfg.temperature, batch_size=256, **kw)
    return res.correct, res.sampled_correct


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean of b - a over the problems and its standard error."""
    d = [y - x for x, y in zip(a, b, strict=True)]
    return sum(d) / len(d), mean_se(d)


def main() -> None:
    run = Path(sys.argv[1])
    opts = dict(a.split("=", 1) for a in sys.argv[2:])
    n, samples = int(opts.get("N", 500)), int(opts.get("S", 16))
    torch.set_num_threads(1)
    cfg = load_config(GRPOConfig, run / "run_config.json")
    ckpt = max(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    task = bench.suite_tasks()[opts.get("task", "chain_sum")]
    rows = as_rows(task.eval_examples(n))
    g0, s0 = per_problem(cfg.model_name_or_path, cfg, rows, samples)
    g1, s1 = per_problem(ckpt, cfg, rows, samples)
    dg, dg_se = paired(g0, g1)
    ds, ds_se = paired(s0, s1)
    print(json.dumps({"run": str(run), "checkpoint": ckpt.name, "n": n, "samples_per_problem": samples,
                      "temperature": cfg.temperature, "greedy_init": sum(g0) / n, "greedy_rl": sum(g1) / n,
                      "greedy_rl_minus_init": dg, "greedy_rl_minus_init_se": dg_se,
                      "sampled_init": sum(s0) / n, "sampled_rl": sum(s1) / n,
                      "sampled_rl_minus_init": ds, "sampled_rl_minus_init_se": ds_se}), flush=True)


if __name__ == "__main__":
    main()
