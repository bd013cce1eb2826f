"""Pass@k at a matched sampling temperature (issue 15): until 2026-12-03 `evaluate` sampled Pass@k at T = 1.0 for
every row, while HRPO's thinking tokens were sampled inside its operator at latent_temperature 0.5, so its Pass@4
lead compared different temperatures. Here every row samples at the temperature it trained with, and the CoT init and
GRPO are also scored at HRPO's 0.5. Full bench budget: 40 RL steps, 1000 problems, seed 0, both suite tasks.

    python docs/bench/full/matched_temperature.py OUT_DIR
"""
import json
import sys
from pathlib import Path

import torch

from latentrl.assets import model_path
from latentrl.bench import eval_checkpoint, run_method, suite_tasks

torch.set_num_threads(1)  # a shared 2-core machine: two spinning OpenMP threads per process slow it 10x
OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "matched_temperature")
rows = []
for task in suite_tasks().values():
    for temperature in (1.0, 0.5):
        rows.append({**eval_checkpoint(f"cot_sft T={temperature}", model_path(task.cot_model), task, k=4, seed=0,
                                       num_eval=1000, temperature=temperature), "trained_T": None})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "samples"}), flush=True)
    for label, method, ov in (("grpo (T=1.0)", "grpo", []), ("grpo (T=0.5)", "grpo", ["temperature=0.5"]),
                              ("hrpo (T=0.5)", "hrpo", [])):
        r = run_method(method, task, OUT / f"{method}-{task.name}-{len(rows)}", quick=False, seed=0, k=4,
                       num_eval=1000, overrides=ov)
        rows.append({**r, "method": label})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "samples"}), flush=True)
(OUT / "results.json").write_text(json.dumps([{k: v for k, v in r.items() if k != "samples"} for r in rows], indent=1))
