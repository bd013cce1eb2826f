"""Table of the DLR chain_sum runs: test Pass@1, paired differences, swap drop, stability over seeds.

    python docs/bench/dlr/summarize.py docs/bench/dlr/run_seed0 docs/bench/dlr/run_seed1 docs/bench/dlr/run_seed2

Reads each run's result.json and curve.json (written by chain_sum_dlr.py) and prints a markdown table.
Stability: "final reward" = mean training reward of the last 10 DLR steps (each step: prompts x K chains);
"mean |step change|" = mean over steps of |reward_t - reward_{t-1}|. Both are on training problems.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def run_row(d: Path) -> dict:
    res = json.loads((d / "result.json").read_text())
    curve = json.loads((d / "curve.json").read_text())
    rew = [c["reward"] for c in curve]
    steps = [abs(b - a) for a, b in zip(rew, rew[1:])]
    return {
        "name": d.name, "seed": res["args"]["seed"], "n": res["test_main_own"]["n"],
        "own": res["test_main_own"], "zero": res.get("test_main_zero_thoughts"),
        "distilled": res["test_distilled"], "dlr": res["test_dlr_best_val"], "last": res["test_dlr_last"],
        "dlr_minus_distilled": res["test_dlr_best_minus_distilled"], "best_step": res["best_val"]["step"],
        "swap_drop": res["swap_dlr_best_val"]["drop_swap"], "swap_drop_se": res["swap_dlr_best_val"]["drop_swap_se"],
        "bit_identical": res["main_weights_bit_identical"],
        "logit_diff": res["main_unrelated_logits_max_abs_diff"], "wall_s": res["wall_s"],
        "final_reward": statistics.mean(rew[-10:]) if rew else float("nan"),
        "mean_abs_step": statistics.mean(steps) if steps else float("nan"), "dlr_steps": len(rew),
    }


def main(dirs: list[str]) -> None:
    rows = [run_row(Path(d)) for d in dirs]
    print("| run | n | own thoughts | zeroed thoughts | distilled | DLR (best val) | DLR (last) | DLR − own "
          "| DLR − distilled | swap drop (DLR) | bit-identical | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        def acc(x):
            return f"{pct(x['acc'])} ± {pct(x['se'])}" if x else "–"

        def dif(x):
            return f"{100 * x['diff']:+.1f} ± {pct(x['se'])}"

        print(f"| {r['name']} (step {r['best_step']}) | {r['n']} | {acc(r['own'])} | {acc(r['zero'])} "
              f"| {acc(r['distilled'])} | {acc(r['dlr'])} | {acc(r['last'])} | {dif(r['dlr']['minus_main_own'])} "
              f"| {dif(r['dlr_minus_distilled'])} | {pct(r['swap_drop'])} ± {pct(r['swap_drop_se'])} "
              f"| {r['bit_identical']} (max abs Δlogit {r['logit_diff']:g}) | {r['wall_s']:.0f} |")
    print()
    print("| run | DLR steps | final reward (last 10 steps) | mean abs step-to-step reward change |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['dlr_steps']} | {r['final_reward']:.3f} | {r['mean_abs_step']:.3f} |")
    if len(rows) > 1:
        def ms(key, f=lambda r, k: r[k]):
            v = [f(r, key) for r in rows]
            return f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}"

        print(f"| mean ± std over {len(rows)} seeds | | {ms('final_reward')} | {ms('mean_abs_step')} |")
        print()
        for key, lab in [("dlr", "DLR (best val) − own"), ("last", "DLR (last) − own"),
                         ("distilled", "distilled − own")]:
            v = [100 * r[key]["minus_main_own"]["diff"] for r in rows]
            print(f"{lab}, over seeds (pts): mean {statistics.mean(v):+.2f}, std {statistics.stdev(v):.2f}, "
                  f"per seed {', '.join(f'{x:+.1f}' for x in v)}")


if __name__ == "__main__":
    main(sys.argv[1:])
