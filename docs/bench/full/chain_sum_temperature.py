"""chain_sum, full bench budget (40 steps, 1000 problems): is HRPO's gain over GRPO the hybrid latent input or its
sampling temperature (HRPO samples at 0.5, the GRPO preset at 1.0)? GRPO at T=1 and HRPO for seeds 1-2 (seed 0 is
the `latentrl bench` run itself), GRPO at T=0.5 for seeds 0-2.

    python docs/bench/full/chain_sum_temperature.py OUT_DIR
"""
import json
import sys
from pathlib import Path

from latentrl.bench import run_method, suite_tasks

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "chain_sum_temperature")
task = suite_tasks()["chain_sum"]
out = []
for seed in (0, 1, 2):
    for name, method, ov in (("grpo", "grpo", []), ("grpo_T0.5", "grpo", ["temperature=0.5"]), ("hrpo", "hrpo", [])):
        if seed == 0 and name != "grpo_T0.5":
            continue  # in the full bench run already
        r = run_method(method, task, OUT / f"{name}-s{seed}", quick=False, seed=seed, k=4,
                       num_eval=1000, overrides=ov)
        r = {**{k: v for k, v in r.items() if k != "samples"}, "label": name, "seed": seed}
        out.append(r)
        print(json.dumps(r), flush=True)
(OUT / "results.json").write_text(json.dumps(out, indent=1))
