"""Run R1's gate curve (the recipe as one command) beside CF → CF5 → CF5F's (the route as three commands), one point
per 512 steps.

    python docs/bench/icot_latent_init/r1_vs_cf_gate.py [R1_FOLDER]   # default: the committed run_R1_*_metrics.jsonl

R1_FOLDER: a run's --out (its metrics.jsonl, probe_s5/metrics.jsonl and finish/metrics.jsonl).
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent


def gates(path: Path, offset: int = 0) -> list[tuple[int, float]]:
    rows = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return [(r["step"] + offset, r["gate/next_step_accuracy"]) for r in rows if "gate/next_step_accuracy" in r]


def smooth(points: list[tuple[int, float]], window: int = 512) -> tuple[list[int], list[float]]:
    bins: dict[int, list[float]] = {}
    for step, value in points:
        bins.setdefault(step // window, []).append(value)
    keys = sorted(bins)
    return [k * window + window // 2 for k in keys], [sum(bins[k]) / len(bins[k]) for k in keys]


def main() -> None:
    if len(sys.argv) > 1:
        r1 = Path(sys.argv[1])
        legs = [r1 / "metrics.jsonl", r1 / "probe_s5" / "metrics.jsonl", r1 / "finish" / "metrics.jsonl"]
    else:
        legs = [HERE / f"run_R1{leg}_metrics.jsonl" for leg in ("", "_probe_s5", "_finish")]
    cf_legs = [HERE / f"run_{run}_metrics.jsonl" for run in ("CF", "CF5", "CF5F")]
    ends: dict[str, list[int]] = {}
    series: dict[str, list[tuple[int, float]]] = {}
    for label, paths in (("R1 (one command)", legs), ("CF → CF5 → CF5F (three commands)", cf_legs)):
        points: list[tuple[int, float]] = []
        offset, ends[label] = 0, []
        for path in paths:  # each leg's steps count from 0: laid end to end
            if path.is_file():
                leg = gates(path, offset)
                points += leg
                offset = max(s for s, _ in leg)
                ends[label].append(offset)
        series[label] = points
    fig, ax = plt.subplots(figsize=(10, 4))
    for label, points in series.items():
        ax.plot(*smooth(points), label=label, lw=1.2)
    for color, leg_ends in zip(("C0", "C1"), ends.values()):
        for end in leg_ends[:-1]:
            ax.axvline(end, color=color, ls=":", lw=0.8)
    ax.set_xlabel("training step (dotted: the end of the curriculum, then of the probe_s5 phase / CF5)")
    ax.set_ylabel("gate: next-step accuracy")
    ax.set_title("icot 4×4, icot_mult_4x4_columns: R1 vs the measured route (mean per 512 steps)")
    ax.legend()
    fig.tight_layout()
    out = HERE / "run_R1_gate.png"
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main()
