"""Run R1's gate curve (the recipe as one command) beside CF → CF5's (the route as measured), one point per 512 steps.

    python docs/bench/icot_latent_init/r1_vs_cf_gate.py [R1_FOLDER]   # default: the committed route_resume/
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
    r1 = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "route_resume"
    r1_curriculum = gates(r1 / "metrics.jsonl")
    r1_end = json.loads((r1 / "curriculum" / "record.json").read_text())["steps"]
    cf = gates(HERE / "run_CF_metrics.jsonl")
    cf_end = max(s for s, _ in cf)
    series = {
        "R1 (one command)": r1_curriculum + gates(r1 / "probe_s5" / "metrics.jsonl", r1_end),
        "CF → CF5 (three commands)": cf + gates(HERE / "run_CF5_metrics.jsonl", cf_end),
    }
    fig, ax = plt.subplots(figsize=(10, 4))
    for label, points in series.items():
        ax.plot(*smooth(points), label=label, lw=1.2)
    ax.axvline(r1_end, color="C0", ls=":", lw=0.8)
    ax.axvline(cf_end, color="C1", ls=":", lw=0.8)
    ax.set_xlabel("training step (dotted: the curriculum's end, the probe_s5 phase after it)")
    ax.set_ylabel("gate: next-step accuracy")
    ax.set_title("icot 4×4, icot_mult_4x4_columns: R1 vs the measured route (mean per 512 steps)")
    ax.legend()
    fig.tight_layout()
    out = HERE / "run_R1_gate.png"
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main()
