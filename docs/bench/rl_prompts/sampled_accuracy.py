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
import math
import sys
from pathlib import Path

import torch

from latentrl import bench
from latentrl.config import GRPOConfig, load_config
from latentrl.data.schema import as_rows
from latentrl.eval import mean_se
from latentrl.methods import get_method
from latentrl.model import LatentModel
from latentrl.rewards import checked_rewards, correctness_reward, reward_columns
from latentrl.rollout import SamplingParams, decode_completions, generate_rollout, left_pad


@torch.no_grad()
def per_problem(path: str | Path, cfg: GRPOConfig, rows: list[dict], samples: int) -> tuple[list[float], list[float]]:
    """(greedy correctness, mean sampled correctness) per problem."""
    model = LatentModel.from_pretrained(path).eval()
    kw = get_method(cfg.method).build(model, cfg).eval_kwargs(cfg)
    op, tok = kw["operator"], model.tokenizer
    gen = torch.Generator().manual_seed(cfg.seed)

    def score(batch: list[dict], temperature: float, deterministic: bool) -> list[float]:
        op.set_eval_mode(deterministic)
        ids, mask = left_pad([tok(kw["prompt_text"](r), add_special_tokens=False)["input_ids"] for r in batch],
                             tok.pad_token_id)
        ro = generate_rollout(model, ids, mask, SamplingParams(max_new_positions=kw["max_new_positions"],
                                                               temperature=temperature), op, kw["schedule"], gen)
        texts = decode_completions(model, ro, skip_latent=not kw["decode_latent"])
        out = checked_rewards(correctness_reward, [r["prompt"] for r in batch], texts, reward_columns(batch))
        return [0.0 if math.isnan(s) else float(s > 0) for s in out]

    greedy, sampled = [], []
    for s in range(0, len(rows), 64):
        greedy += score(rows[s : s + 64], 0.0, True)
    per = max(1, 256 // samples)
    for s in range(0, len(rows), per):
        part = rows[s : s + per]
        hits = score([r for r in part for _ in range(samples)], cfg.temperature, False)
        sampled += [sum(hits[i * samples : (i + 1) * samples]) / samples for i in range(len(part))]
    op.set_eval_mode(False)
    return greedy, sampled


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
