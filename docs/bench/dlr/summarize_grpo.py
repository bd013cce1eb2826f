"""Tables of grpo_equal_flops.py runs next to the DLR runs they are budgeted against (issue 19).

    python docs/bench/dlr/summarize_grpo.py docs/bench/dlr/grpo_flops_seed{0,1,2}

Stability, the definition of summarize.py: "final reward" = mean training reward of the last 10 steps before the
budget; "mean |step change|" = mean over steps of |reward_t - reward_{t-1}|. The reward compared with DLR's is
correctness (0/1; GRPO's training reward is format + correctness). A GRPO step scores 32 completions, a DLR step
256, so GRPO's per-step means are noisier by sampling alone: the "8-step blocks" columns average 8 GRPO steps
(256 completions, as one DLR step) before taking the same two statistics (last 10 blocks; |block change|).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

DLR_SETS = {"DLR lr 1e-4 (init-from, the budget runs)": "run_lr1e-4_seed{}",
            "DLR lr 1e-4 (from scratch, default)": "run_default_seed{}"}


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def stab(rew: list[float]) -> tuple[float, float]:
    return statistics.mean(rew[-10:]), statistics.mean(abs(b - a) for a, b in zip(rew, rew[1:]))


def blocks(rew: list[float], k: int = 8) -> list[float]:
    return [statistics.mean(rew[i : i + k]) for i in range(0, len(rew) - k + 1, k)]


def ms(v: list[float]) -> str:
    return f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}"


def main(dirs: list[str]) -> None:
    runs = []
    for d in map(Path, dirs):
        res = json.loads((d / "result.json").read_text())
        log = [json.loads(x) for x in (d / "log.jsonl").read_text().splitlines()]
        steps = [r for r in log if "reward" in r]
        runs.append((d, res, steps))
    budgets = [k for k in runs[0][1] if k.endswith("xB")]
    for b in budgets:
        print(f"\n**{b}** (B = the DLR run's forward FLOPs of the same seed)\n")
        print("| seed | steps | cum. GRPO FLOPs (fwd + bwd) | of which forward | val FLOPs (not in budget) | own thoughts "
              "| GRPO last | GRPO best val (step) | last − own | best − own | swap drop last | swap drop best "
              "| max abs Δ logit, unrelated |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for _d, res, _ in runs:
            k = res[b]
            own = res["test_main_own"]
            tl, tb = k["test_last"], k["test_best"]

            def acc(x):
                return f"{pct(x['acc'])} ± {pct(x['se'])}"

            def dif(x):
                return f"{100 * x['minus_main_own']['diff']:+.1f} ± {pct(x['minus_main_own']['se'])}"

            def sw(x):
                return f"{pct(x['swap']['drop_swap'])} ± {pct(x['swap']['drop_swap_se'])}"

            print(f"| {res['args']['seed']} | {k['step']} | {k['cum_total_flops']:.3g} | {k['cum_forward_flops']:.3g} "
                  f"| {k['cum_val_flops']:.2g} | {acc(own)} | {acc(tl)} | {acc(tb)} ({k['best_val']['step']}) "
                  f"| {dif(tl)} | {dif(tb)} | {sw(tl)} | {sw(tb)} | {k['main_unrelated_logits_max_abs_diff']:.3g} |")
        for var in ("last", "best"):
            v = [100 * res[b][f"test_{var}"]["minus_main_own"]["diff"] for _, res, _ in runs]
            a = [100 * res[b][f"test_{var}"]["acc"] for _, res, _ in runs]
            sd = f"{statistics.stdev(v):.2f}" if len(v) > 1 else "–"
            print(f"\n{b} {var}: Pass@1 mean {statistics.mean(a):.2f} %, − own mean {statistics.mean(v):+.2f} pts "
                  f"(std {sd} over seeds)")

    print("\n| run | budget | steps | final correctness reward (last 10 steps) | mean abs step change "
          "| final (last 10 8-step blocks) | mean abs 8-step-block change | final total reward (format + corr.) |")
    print("|---|---|---|---|---|---|---|---|")
    agg: dict[str, list] = {}
    for d, res, steps in runs:
        for b in budgets:
            n = res[b]["step"]
            rew = [s["correctness"] for s in steps[:n]]
            tot = [s["reward"] for s in steps[:n]]
            f, c = stab(rew)
            fb, cb = stab(blocks(rew))
            ft, _ = stab(tot)
            agg.setdefault(b, []).append((f, c, fb, cb, ft))
            print(f"| {d.name} | {b} | {n} | {f:.3f} | {c:.3f} | {fb:.3f} | {cb:.3f} | {ft:.3f} |")
    for b, v in agg.items():
        cols = list(zip(*v))
        print(f"| GRPO mean ± std over {len(v)} seeds | {b} | | {ms(cols[0])} | {ms(cols[1])} | {ms(cols[2])} "
              f"| {ms(cols[3])} | {ms(cols[4])} |")
    root = Path(dirs[0]).parent
    for lab, pat in DLR_SETS.items():
        fs, cs, finals = [], [], []
        for s in range(3):
            p = root / pat.format(s) / "curve.json"
            if not p.exists():
                continue
            rew = [c["reward"] for c in json.loads(p.read_text())]
            f, c = stab(rew)
            fs.append(f), cs.append(c), finals.append(f"{f:.3f}")
        if fs:
            print(f"| {lab}, {len(fs)} seeds (per seed {', '.join(finals)}) | B | 150 | {ms(fs)} | {ms(cs)} "
                  f"| (a DLR step = 256 chains) | | |")


if __name__ == "__main__":
    main(sys.argv[1:])
