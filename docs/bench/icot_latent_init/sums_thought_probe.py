"""Which column sums the stage-5 thoughts of a `columns_tens_first` model hold: linear probes.

At stage 5 the column-sums step is 2 thoughts (positions 12 and 13 of 14). The model's greedy rollout (as in
evaluation) gives the 14 vectors it fed as thoughts; vector 13 is the output of thought 12 (the first sums thought),
the output of thought 13 is never fed back (`<|end-latent|>` follows). For S_2, S_3 and S_4 (column sums without
carries) a logistic probe on standardised features is fitted on N_FIT generated problems and scored on N_TEST
others, for the whole sum (37 classes), its tens digit (4) and its units digit (10), from vector 13 (`t13`), from
vectors 12 and 13 (`t12_13`) and from all 14 (`all`). Problems are `load_examples("icot_mult", "eval", seed=7)`,
disjoint from the real valid file and unused by training.

    OMP_NUM_THREADS=1 PYTHONPATH=src:docs/bench/icot_latent_init python \
        docs/bench/icot_latent_init/sums_thought_probe.py MODEL_DIR [N_FIT [N_TEST]]
"""

from __future__ import annotations

import json
import sys

import torch
from partials_probe import probe_accuracy, probe_data

from latentrl.data.tasks import icot_mult_factors

THOUGHTS = 14


def column_sums(examples) -> dict[int, torch.Tensor]:
    """S_c for c = 0..7: column c's digits of the four partial products added without carries."""
    sums: dict[int, list[int]] = {c: [] for c in range(8)}
    for ex in examples:
        a, b = icot_mult_factors(ex.question)
        parts = [a * int(d) * 10**i for i, d in enumerate(reversed(str(b)))]
        for c in range(8):
            sums[c].append(sum(p // 10**c % 10 for p in parts))
    return {c: torch.tensor(v) for c, v in sums.items()}


def main() -> None:
    model_dir = sys.argv[1]
    n_fit = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    n_test = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    examples, h, fit, test = probe_data(model_dir, THOUGHTS, n_fit, n_test)
    sums = column_sums(examples)
    features = {"t13": h[:, 13], "t12_13": h[:, 12:14].flatten(1), "all": h.flatten(1)}
    result: dict[str, float] = {}
    majority: dict[str, float] = {}
    for c in (2, 3, 4):
        for label, y, classes in (("S", sums[c], 37), ("T", sums[c] // 10, 4), ("U", sums[c] % 10, 10)):
            majority[f"{label}{c}"] = round(float((y[test] == y[fit].mode().values).float().mean()), 3)
            for name, x in features.items():
                result[f"{name}:{label}{c}"] = round(probe_accuracy(x[fit], y[fit], x[test], y[test], classes=classes), 3)
    print(json.dumps({"model": model_dir, "n_fit": n_fit, "n_test": n_test, "probe_accuracy": result,
                      "majority_class": majority}))


if __name__ == "__main__":
    main()
