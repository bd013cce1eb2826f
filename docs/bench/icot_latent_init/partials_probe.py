"""What the thoughts of a partial-products Coconut model (`icot_mult_4x4_partials`) encode: linear probes.

The model gets THOUGHTS continuous thoughts after the question (greedy rollout, as in evaluation). For each digit
of each latent partial product and for each answer digit, a multinomial logistic probe (10 classes, on the
standardised thought vectors) is fitted on N_FIT generated problems and scored on N_TEST others:

* `own`: product j's digits from its own 3 thoughts (the positions that replaced it in the curriculum);
* `all`: from every thought at once (what an answer position could read if attention were free);
* `column`: answer column c's digit of every latent product (p_j digit c - j) from that product's own 3 thoughts,
  with ONE probe per column shared by the products (fitted on all of them pooled, scored per product): high when
  the thoughts store each digit in a subspace named by its answer column, so that a single attention read (one
  value projection over the product groups) can gather a column.

High probe accuracy with the model's answer digit at chance means the information is in the thoughts and the model
does not read or combine it; low probe accuracy means the thoughts do not hold it. Problems are generated
(`load_examples("icot_mult", "eval", seed=7)`), disjoint from the real valid file and unused by training.

    OMP_NUM_THREADS=1 PYTHONPATH=src python docs/bench/icot_latent_init/partials_probe.py MODEL_DIR THOUGHTS [N_FIT [N_TEST]]
"""

from __future__ import annotations

import json
import sys

import torch

from latentrl.data import load_examples
from latentrl.data.tasks import icot_mult_example, icot_mult_factors
from latentrl.model import LatentModel
from latentrl.sft.coconut.inference import coconut_rollout

C_THOUGHT = 3


def thoughts_of(model: LatentModel, examples, thoughts: int, batch: int = 250) -> torch.Tensor:
    """(N, THOUGHTS, H): the thought vectors each problem's greedy rollout fed the model."""
    out = []
    with torch.no_grad():
        for s in range(0, len(examples), batch):
            ro = coconut_rollout(model, examples[s:s + batch], thoughts, max_new_positions=thoughts + 2)
            h = ro.payload["hidden"].float()
            mask = ro.latent_mask
            out.append(torch.stack([h[b][mask[b]][:thoughts] for b in range(h.shape[0])]))
    return torch.cat(out)


def targets(examples) -> dict[str, torch.Tensor]:
    """Product j digit i ("p{j}d{i}", least significant first, the product's own digits) and answer digit k."""
    cols: dict[str, list[int]] = {}
    for ex in examples:
        a, b = icot_mult_factors(ex.question)
        ref = icot_mult_example(a, b, chain="partials")
        for j, step in enumerate(ref.steps):
            digits = step.replace("+", "").split()[j:]  # drop the shift's leading zeros
            for i, d in enumerate(digits[:5]):
                cols.setdefault(f"p{j}d{i}", []).append(int(d))
        for k, d in enumerate(ref.answer.split()):
            cols.setdefault(f"a{k}", []).append(int(d))
    return {k: torch.tensor(v) for k, v in cols.items()}


def probe_accuracy(x_fit: torch.Tensor, y_fit: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                   steps: int = 300, weight_decay: float = 1e-3, classes: int = 10) -> float:
    """Held-out accuracy of a logistic probe over `classes` classes (full-batch L-BFGS on standardised features)."""
    mu, sd = x_fit.mean(0), x_fit.std(0).clamp_min(1e-6)
    xf, xt = (x_fit - mu) / sd, (x_test - mu) / sd
    torch.manual_seed(0)
    lin = torch.nn.Linear(xf.shape[1], classes)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(xf), y_fit) + weight_decay * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float((lin(xt).argmax(-1) == y_test).float().mean())


def probe_data(model_dir: str, thoughts: int, n_fit: int, n_test: int):
    """The generated probe problems (seed 7, unused by training), their thoughts (N, THOUGHTS, H) from the model's
    greedy rollout, and the fit / test slices."""
    torch.set_num_threads(1)
    model = LatentModel.from_pretrained(model_dir)
    examples = load_examples("icot_mult", "eval", n=n_fit + n_test, seed=7, digits=4, chain="partials")
    return examples, thoughts_of(model, examples, thoughts), slice(0, n_fit), slice(n_fit, n_fit + n_test)


def main() -> None:
    model_dir, thoughts = sys.argv[1], int(sys.argv[2])
    n_fit = int(sys.argv[3]) if len(sys.argv) > 3 else 4000
    n_test = int(sys.argv[4]) if len(sys.argv) > 4 else 1000
    examples, h, fit, test = probe_data(model_dir, thoughts, n_fit, n_test)
    y = targets(examples)
    flat = h.flatten(1)
    result: dict[str, dict[str, float]] = {"own": {}, "all": {}}
    for name, col in y.items():
        if name.startswith("p"):
            j = int(name[1])
            if j >= thoughts // C_THOUGHT:
                continue  # product j is written in words, not in the thoughts
            own = h[:, j * C_THOUGHT:(j + 1) * C_THOUGHT].flatten(1)
            result["own"][name] = round(probe_accuracy(own[fit], col[fit], own[test], col[test]), 3)
        result["all"][name] = round(probe_accuracy(flat[fit], col[fit], flat[test], col[test]), 3)
    groups = thoughts // C_THOUGHT
    own_h = [h[:, j * C_THOUGHT:(j + 1) * C_THOUGHT].flatten(1) for j in range(groups)]
    result["column"] = {}
    for c in range(8):
        members = [j for j in range(groups) if 0 <= c - j <= 4]
        if len(members) < 2:
            continue
        xf = torch.cat([own_h[j][fit] for j in members])
        yf = torch.cat([y[f"p{j}d{c - j}"][fit] for j in members])
        for j in members:
            acc = probe_accuracy(xf, yf, own_h[j][test], y[f"p{j}d{c - j}"][test])
            result["column"][f"c{c}p{j}"] = round(acc, 3)
    majority = {k: round(float((v[test] == v[fit].mode().values).float().mean()), 3) for k, v in y.items()}
    print(json.dumps({"model": model_dir, "thoughts": thoughts, "n_fit": n_fit, "n_test": n_test,
                      "probe_accuracy": result, "majority_class": majority}))


if __name__ == "__main__":
    main()
