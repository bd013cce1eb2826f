"""What a `chain=columns` stage-4 model writes for one column sum S_k, as a function of the problem: greedy decode
of the real iCoT 4x4 validation file (12 thoughts), then two least-squares fits over the problems where S_k was
written as two digits:

1. the written value on S_k's addends (the column's digit of each shifted partial product) and a constant: a model
   that computes the sum has every coefficient 1 and a residual of 0;
2. the error (written - true) on the candidate causes of an error: each column sum's units and tens digit, the
   carries of the true product, and the factors' digits. Coefficients above 0.08 in size are printed; the
   residual's spread against the error's says how much of the error these features explain.

It also prints the histogram of the error (written - true): a model that misreads one addend errs by at most 9, one
that only knows the sum's size spreads its errors evenly around 0.

    OMP_NUM_THREADS=1 PYTHONPATH=src python docs/bench/icot_latent_init/column_sum_errors.py MODEL_DIR [N [K ...]]
"""

from __future__ import annotations

import json
import sys

import torch

from latentrl.bench import suite_tasks
from latentrl.data.tasks import icot_mult_example, icot_mult_factors
from latentrl.model import LatentModel
from latentrl.sft.coconut.inference import coconut_generate


def fit(x: list[list[float]], y: list[float]) -> tuple[list[float], float, float]:
    """Least-squares coefficients of y on x, the residual's standard deviation and y's. The features of the error
    fit are collinear (a column sum is its units + 10 x its tens), so the minimum-norm solution (SVD) is taken."""
    xt, yt = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    coef = torch.linalg.lstsq(xt, yt[:, None], driver="gelsd").solution[:, 0]
    return coef.tolist(), float((yt - xt @ coef).std()), float(yt.std())


def main() -> None:
    model_dir = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    columns = [int(k) for k in sys.argv[3:]] or [3]
    lm = LatentModel.from_pretrained(model_dir)
    evals = suite_tasks()["icot_mult_4x4"].eval_examples(n)
    completions = coconut_generate(lm, evals, 12, max_new_positions=64, batch_size=250)  # greedy
    names = ([f"units(S_{k})" for k in range(8)] + [f"tens(S_{k})" for k in range(8)]
             + [f"carry_into_{k}" for k in range(8)] + [f"a{i}" for i in range(4)] + [f"b{i}" for i in range(4)])
    for col in columns:
        x_add, y_val, x_err, y_err = [], [], [], []
        for completion, ex in zip(completions, evals, strict=True):
            a, b = icot_mult_factors(ex.question)
            ref = icot_mult_example(a, b, chain="columns")
            products = [[int(d) for d in step.split() if d != "+"] for step in ref.steps[:4]]
            products = [p + [0] * (8 - len(p)) for p in products]  # shifted products, column k at index k
            sums = [sum(p[k] for p in products) for k in range(8)]
            carries = [0]
            for k in range(7):
                carries.append((sums[k] + carries[-1]) // 10)
            written = completion.partition("####")[0].split()[1:]  # `= u0 t0 u1 t1 ...`
            try:
                value = int(written[2 * col]) + 10 * int(written[2 * col + 1])
            except (IndexError, ValueError):
                continue
            digits = [int(c) for c in str(a)[::-1]] + [int(c) for c in str(b)[::-1]]
            x_add.append([p[col] for p in products] + [1.0])
            y_val.append(value)
            x_err.append([s % 10 for s in sums] + [s // 10 for s in sums] + carries + digits + [1.0])
            y_err.append(value - sums[col])
        coef, resid, spread = fit(x_add, y_val)
        err_coef, err_resid, err_spread = fit(x_err, y_err)
        print(json.dumps({
            "model": model_dir, "column": col, "n_written": len(y_val),
            "exact": round(sum(e == 0 for e in y_err) / len(y_err), 3),
            "error_histogram": {e: y_err.count(e) for e in sorted(set(y_err))},
            "value_on_addends": {"coef_p0_p1_p2_p3": [round(c, 3) for c in coef[:4]], "const": round(coef[4], 3),
                                 "residual_std": round(resid, 2), "value_std": round(spread, 2)},
            "error_on_features": {"large_coefs": {nm: round(c, 2) for nm, c in zip(names, err_coef) if abs(c) > 0.08},
                                  "residual_std": round(err_resid, 2), "error_std": round(err_spread, 2)},
        }))


if __name__ == "__main__":
    main()
