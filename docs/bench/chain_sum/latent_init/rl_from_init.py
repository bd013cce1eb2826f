"""RL from the shipped chain_sum latent init (issue #16 item 4): the bench's `run_method` for each method given, with
its `coconut_sft` init replaced by the shipped `chain_sum-coconut` checkpoint; 40 RL steps (the CPU presets' full
budget), seed 0, Pass@1 / Pass@4 / positions / thought-dependence on the first 500 held-out chain_sum problems.

    PYTHONPATH=src python docs/bench/chain_sum/latent_init/rl_from_init.py OUT_DIR coconut_grpo latent_rl
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from latentrl import bench
from latentrl.assets import model_path


def main() -> None:
    out, *methods = sys.argv[1:]
    torch.set_num_threads(1)
    bench.INIT_BUILDERS["coconut_sft"] = lambda task, cache, quick: model_path("chain_sum-coconut")
    task = bench.suite_tasks()["chain_sum"]
    rows = []
    for m in methods:
        r = bench.run_method(m, task, Path(out), quick=False, seed=0, k=4, num_eval=500)
        rows.append({k: v for k, v in r.items() if k != "samples"} | {"samples": r["samples"][:3]})
        print(json.dumps(rows[-1]), flush=True)
    Path(out, "rl_from_init.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
