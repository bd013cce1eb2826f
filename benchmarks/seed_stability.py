"""Reward-curve stability over seeds: the same method preset trained with several seeds, curves side by side.

DLR's claim is stable training at a comparable budget; this measures it against GRPO at the same number of steps,
prompts and completions per step (and sums each run's logged `compute/*` FLOP estimates where the method logs them — DLR does):

    python benchmarks/seed_stability.py --methods grpo,dlr --seeds 0,1,2 --steps 20 --out docs/bench/chain_sum/seeds

Each run is `latentrl train --config configs/cpu/<method>.yaml` on the chain_sum suite task (shipped chain_sum-cot
model), so what is compared is exactly what the CPU suite trains. Writes `results.json` (per method: reward curve
per seed, across-seed mean and std per step, final-window statistics), `results.md` and `reward_curves.png`.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from latentrl.cli import build_model_for, load_train_data, small_model_threads
from latentrl.config import GRPOConfig, load_config
from latentrl.methods import get_method


def run(method: str, seed: int, steps: int, out: Path, extra: list[str]) -> list[dict]:
    overrides = [f"seed={seed}", f"max_steps={steps}", f"output_dir={out}", "report_to=[jsonl]", "save_steps=0",
                 "model_name_or_path=chain_sum-cot", "dataset=chain_sum", "max_completion_length=60", *extra]
    cfg = load_config(GRPOConfig, f"configs/cpu/{method}.yaml", overrides)
    trainer = get_method(cfg.method).trainer_class(cfg, build_model_for(cfg), load_train_data(cfg))
    return trainer.train()


def summarise(curves: list[list[float]], window: int) -> dict:
    per_step = list(zip(*curves))
    last = [statistics.fmean(c[-window:]) for c in curves]
    return {
        "mean_per_step": [statistics.fmean(s) for s in per_step],
        "std_per_step": [statistics.stdev(s) if len(s) > 1 else 0.0 for s in per_step],
        "final_window_mean_per_seed": last,
        "final_window_mean": statistics.fmean(last),
        "final_window_std_across_seeds": statistics.stdev(last) if len(last) > 1 else 0.0,
        "mean_abs_step_change": statistics.fmean(abs(b - a) for c in curves for a, b in zip(c, c[1:])),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="grpo,dlr")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--window", type=int, default=5, help="last steps averaged for the final-reward statistics")
    p.add_argument("--out", required=True)
    p.add_argument("overrides", nargs="*", help="key=value overrides applied to every run")
    a = p.parse_args()
    small_model_threads()
    out = Path(a.out)
    results: dict[str, dict] = {}
    for method in a.methods.split(","):
        curves, flops = [], []
        for seed in (int(s) for s in a.seeds.split(",")):
            history = run(method, seed, a.steps, out / "runs" / f"{method}-seed{seed}", a.overrides)
            curves.append([h["reward"] for h in history])
            flops.append(sum(v for h in history for k, v in h.items() if k.startswith("compute/") and k.endswith("_flops")))
        results[method] = {"rewards": curves, "total_logged_flops": flops, **summarise(curves, a.window)}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    lines = ["| method | final reward (mean of last {w} steps), per seed | across seeds: mean ± std | mean |step-to-step "
             "change| |".format(w=a.window), "|---|---|---:|---:|"]
    for m, r in results.items():
        per_seed = ", ".join(f"{x:.3f}" for x in r["final_window_mean_per_seed"])
        lines.append(f"| {m} | {per_seed} | {r['final_window_mean']:.3f} ± {r['final_window_std_across_seeds']:.3f} | "
                     f"{r['mean_abs_step_change']:.3f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (m, r) in enumerate(results.items()):
        color = f"C{i}"
        for c in r["rewards"]:
            ax.plot(range(1, len(c) + 1), c, color=color, alpha=0.3, lw=1)
        ax.plot(range(1, len(r["mean_per_step"]) + 1), r["mean_per_step"], color=color, lw=2, label=f"{m} (mean)")
    ax.set(xlabel="step", ylabel="mean reward of the step's rollouts", title="reward curves over seeds (chain_sum)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "reward_curves.png", dpi=120)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
