"""A shipped latent init vs the same model after 40 RL steps (rl_from_init.py, or `latentrl bench` into RL_OUT_DIR):
greedy per-problem correctness on the first 500 held-out problems of TASK (default chain_sum; icot_mult_4x4: the
real valid file), paired differences with their standard errors, and the init's Pass@4 with the bench's protocol
(`evaluate(..., k=4)`, as `run_method` calls it).

    PYTHONPATH=src python docs/bench/chain_sum/latent_init/compare_rl.py RL_OUT_DIR [TASK] > compare_rl.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from latentrl.assets import model_path
from latentrl.bench import suite_tasks
from latentrl.eval import evaluate, mean_se
from latentrl.model import LatentModel
from latentrl.rewards import correctness_reward
from latentrl.sft.coconut import coconut_generate, coconut_operator, coconut_prompt_text, coconut_schedule


def per_problem(path, evals, thoughts: int, max_new: int) -> list[float]:
    model = LatentModel.from_pretrained(path)
    texts = coconut_generate(model, evals, thoughts, max_new_positions=max_new, batch_size=250)
    return [float((s or 0) > 0) for s in correctness_reward([e.question for e in evals], texts,
                                                             answer=[e.answer for e in evals])]


def main() -> None:
    torch.set_num_threads(1)
    rl_dir = Path(sys.argv[1]) / "runs"
    task = suite_tasks()[sys.argv[2] if len(sys.argv) > 2 else "chain_sum"]
    evals = task.eval_examples(500)
    init = model_path(task.shipped_inits["coconut_sft"])
    thoughts, max_new = json.loads((init / "latent_init.json").read_text())["num_thoughts"], task.max_completion_length
    model = LatentModel.from_pretrained(init)
    start = model.latent_tokens.start
    res = evaluate(model, evals, operator=coconut_operator(model), schedule=coconut_schedule(model, thoughts),
                   max_new_positions=max_new, k=4, seed=0, prompt_text=lambda r: coconut_prompt_text(r, start))
    base = per_problem(init, evals, thoughts, max_new)
    out = {"init": {"pass_at_1": res.pass_at_1, "pass_at_4": res.pass_at_k, "greedy_recheck": sum(base) / len(base),
                    "mean_reasoning_positions": res.mean_reasoning_positions}}
    for method in ("coconut_grpo", "latent_rl"):
        ck = rl_dir / f"{method}-{task.name}" / "checkpoint-40"
        got = per_problem(ck, evals, thoughts, max_new)
        d = [g - b for g, b in zip(got, base)]
        out[method] = {"pass_at_1": sum(got) / len(got), "diff_vs_init": sum(d) / len(d), "diff_se": mean_se(d)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
