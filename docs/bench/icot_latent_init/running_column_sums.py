"""Does a `chain=columns` Coconut model carry running column sums in its thoughts? For a model at 12 thoughts (the
four partial products as 3 thoughts each), a logistic probe on each product group's thoughts is fitted to the sum
of column c's digits over that product and the ones before it (p_0[c] + ... + p_j[c]), on generated problems,
and scored on others. High accuracy at the last group means the sum S_c is already formed in the thoughts and
the sums step only has to copy it; accuracy near the majority class means the sums step must add the addends
itself. Problems are `load_examples("icot_mult", "eval", seed=7)`, unused by training.

    OMP_NUM_THREADS=1 PYTHONPATH=src:docs/bench/icot_latent_init python docs/bench/icot_latent_init/running_column_sums.py MODEL_DIR [N_FIT [N_TEST [C ...]]]
"""

from __future__ import annotations

import json
import sys

import torch
from partials_probe import probe_accuracy, thoughts_of  # same folder

from latentrl.data import load_examples
from latentrl.data.tasks import icot_mult_example, icot_mult_factors
from latentrl.model import LatentModel

GROUP = 3  # thoughts per partial product


def main() -> None:
    model_dir = sys.argv[1]
    n_fit = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    n_test = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    columns = [int(c) for c in sys.argv[4:]] or [2, 3, 4, 5]
    torch.set_num_threads(1)
    model = LatentModel.from_pretrained(model_dir)
    examples = load_examples("icot_mult", "eval", n=n_fit + n_test, seed=7, digits=4, chain="columns")
    h = thoughts_of(model, examples, 4 * GROUP)
    products = []
    for ex in examples:
        ref = icot_mult_example(*icot_mult_factors(ex.question), chain="columns")
        rows = [[int(d) for d in step.split() if d != "+"] for step in ref.steps[:4]]
        products.append([r + [0] * (8 - len(r)) for r in rows])  # column k at index k
    p = torch.tensor(products)  # (N, 4, 8)
    fit, test = slice(0, n_fit), slice(n_fit, n_fit + n_test)
    result: dict[str, dict[str, float]] = {}
    for c in columns:
        row: dict[str, float] = {}
        for j in range(4):
            y = p[:, : j + 1, c].sum(1)
            x = h[:, j * GROUP:(j + 1) * GROUP].flatten(1)
            acc = probe_accuracy(x[fit], y[fit], x[test], y[test], classes=9 * (j + 1) + 1)
            majority = float((y[test] == y[fit].mode().values).float().mean())
            row[f"p0..p{j}"] = round(acc, 3)
            row[f"p0..p{j}_majority"] = round(majority, 3)
        result[f"column_{c}"] = row
    print(json.dumps({"model": model_dir, "n_fit": n_fit, "n_test": n_test, "running_sum_probe_accuracy": result}))


if __name__ == "__main__":
    main()
