"""Self-feed runs side by side: the gate's generated accuracy (the model writing all its own latents, 256 problems
per evaluation, mean of 8 evaluations) and its teacher-forced answer accuracy, against self-feed steps.

    python docs/bench/chain_sum/superposition_init/plot_selffeed.py OUT.png LABEL=PATH [LABEL=PATH ...]

PATH: a run's history.json (`gate` list) or metrics.jsonl (rows with `gate/generated_accuracy`).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def gate_rows(path: Path) -> list[dict]:
    if path.suffix == ".json":
        return json.loads(path.read_text())["gate"]
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by_step = {r["step"]: r for r in rows if "gate/generated_accuracy" in r}  # a resumed run repeats some steps
    return [by_step[s] for s in sorted(by_step)]


def rolling(values: list[float], n: int = 8) -> list[float]:
    return [sum(values[max(0, i - n + 1): i + 1]) / len(values[max(0, i - n + 1): i + 1]) for i in range(len(values))]


def main() -> None:
    out, runs = Path(sys.argv[1]), [a.split("=", 1) for a in sys.argv[2:]]
    fig, (gen, tf) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, path in runs:
        rows = gate_rows(Path(path))
        steps = [r["step"] for r in rows]
        gen.plot(steps, rolling([r["gate/generated_accuracy"] for r in rows]), label=label)
        tf.plot(steps, rolling([r["gate/answer_accuracy"] for r in rows]), label=label)
    gen.set(xlabel="self-feed steps", ylabel="generated answer accuracy (own latents)", title="the model writes its latents")
    tf.set(xlabel="self-feed steps", ylabel="teacher-forced answer accuracy", title="target latents fed in")
    for ax in (gen, tf):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main()
