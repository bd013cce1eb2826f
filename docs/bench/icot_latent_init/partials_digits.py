"""Where a partial-products CoT model (`icot_mult` with `chain=partials`) goes wrong: greedy decode of the real iCoT
4x4 validation file, then the fraction of problems whose chain (the 4 partial products) is exactly right and the
accuracy of each answer digit (least significant first). With THOUGHTS > 0 the model is a Coconut latent init
(`scripts/train_latent_init.py icot_mult_4x4_partials`): it gets THOUGHTS continuous thoughts and `<|end-latent|>`
after the question, and "chain exact" scores the partial products it still writes in words (the last
4 - THOUGHTS / 3 of them). CHAIN=columns (or columns_tens_first) scores a model trained on that chain the same way, and, when the
model writes the column-sums step (up to 12 thoughts), the accuracy of each column sum's units and tens digit.
THOUGHTS may also list the thoughts of each latent step, e.g. `3+3+3+4` (a model trained with
`thoughts_per_step=[3,3,3,4,2]`); a plain number means 3 per step. A fifth argument `swap` adds the thought-dependence check (`latentrl.thought_dependence`: Pass@1 with thoughts
swapped between problems and zeroed) on the same problems.

    OMP_NUM_THREADS=1 PYTHONPATH=src python docs/bench/icot_latent_init/partials_digits.py MODEL_DIR [N [THOUGHTS [CHAIN [swap]]]]
"""

from __future__ import annotations

import json
import sys

from latentrl.bench import suite_tasks
from latentrl.data.tasks import icot_mult_example, icot_mult_factors
from latentrl.eval import evaluate
from latentrl.model import LatentModel
from latentrl.sft.coconut import coconut_operator, coconut_prompt_text, coconut_schedule


def main() -> None:
    model_dir = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    per_step = [int(c) for c in sys.argv[3].split("+")] if len(sys.argv) > 3 else [0]
    chain_name = sys.argv[4] if len(sys.argv) > 4 else "partials"
    thoughts = sum(per_step)
    if len(per_step) > 1:
        latent_steps = len(per_step)
    else:  # 3 thoughts per step; past 12 the column sums are 2 thoughts
        latent_steps = min(thoughts // 3, 4) + (chain_name.startswith("columns") and thoughts > 12)
    swap = len(sys.argv) > 5 and sys.argv[5] == "swap"
    lm = LatentModel.from_pretrained(model_dir)
    evals = suite_tasks()["icot_mult_4x4"].eval_examples(n)
    latent = {}
    if thoughts:
        start = lm.latent_tokens.start
        latent = {"operator": coconut_operator(lm), "schedule": coconut_schedule(lm, thoughts),
                  "prompt_text": lambda row: coconut_prompt_text(row, start)}
    res = evaluate(lm, evals, max_new_positions=64, num_samples_to_keep=n, batch_size=250, **latent)
    chain_ok, digit_ok, sums_ok = 0, [0] * 8, [[0, 0] for _ in range(8)]
    for sample, ex in zip(res.samples, evals, strict=True):
        ref = icot_mult_example(*icot_mult_factors(ex.question), chain=chain_name)
        chain, _, answer = sample["completion"].partition("####")
        chain_ok += chain.split() == " ".join(ref.steps[latent_steps:]).split()
        if chain_name.startswith("columns") and latent_steps <= 4:  # the model writes `... = u0 t0 u1 t1 ...`
            got_s, want_s = chain.split("=")[-1].split() if "=" in chain else [], ref.steps[-1].split()[1:]
            tens_first = chain_name == "columns_tens_first"  # `= t0 u0 t1 u1 ...`
            for i, w in enumerate(want_s):
                sums_ok[i // 2][(i % 2) ^ tens_first] += i < len(got_s) and got_s[i] == w
        got, want = answer.split(), ref.answer.split()
        for i, w in enumerate(want):
            digit_ok[i] += i < len(got) and got[i] == w
    out = {"model": model_dir, "thoughts": thoughts, "chain": chain_name, "n": res.n, "pass_at_1": res.pass_at_1,
           "chain_exact": chain_ok / res.n, "answer_digit_accuracy_lsb_first": [round(d / res.n, 3) for d in digit_ok]}
    if chain_name.startswith("columns") and latent_steps <= 4:
        out["column_sum_units_tens_accuracy"] = [[round(u / res.n, 3), round(t / res.n, 3)] for u, t in sums_ok]
    if swap and thoughts:
        from latentrl.thought_dependence import thought_dependence

        dep = thought_dependence(lm, evals, max_new_positions=64, batch_size=250, **latent)
        out["thought_dependence"] = dep.to_dict()
    out["mean_reasoning_positions"] = res.mean_reasoning_positions
    print(json.dumps(out))


if __name__ == "__main__":
    main()
