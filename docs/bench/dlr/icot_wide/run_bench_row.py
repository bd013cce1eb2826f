"""The `dlr` bench row on icot 4x4 with a wider, deeper assistant and a longer distillation (overrides of the preset).

    OMP_NUM_THREADS=1 PYTHONPATH=src python docs/bench/dlr/icot_wide/run_bench_row.py OUT [key=value ...]

`latentrl bench`'s `run_method("dlr", icot_mult_4x4, ...)` (the shipped `icot_mult_4x4-coconut` as the frozen main
model, RL prompts off its training problems, seed 0), with the overrides below and any given, evaluated on the whole
real valid file (1000) with the thought-swap check; the row goes to OUT/row.json.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from latentrl import bench

OVERRIDES = ["dlr.assistant_hidden_size=128", "dlr.assistant_layers=4", "dlr.distill_steps=15000",
             "dlr.distill_examples=50000"]


def main() -> None:
    out, extra = Path(sys.argv[1]), sys.argv[2:]
    torch.set_num_threads(1)
    row = bench.run_method("dlr", bench.suite_tasks()["icot_mult_4x4"], out, quick=False, seed=0, k=4,
                           num_eval=1000, overrides=[*OVERRIDES, *extra])
    row = {k: v for k, v in row.items() if k != "samples"}
    (out / "row.json").write_text(json.dumps({"overrides": [*OVERRIDES, *extra], "row": row}, indent=1, default=str))
    print(json.dumps(row, default=str), flush=True)


if __name__ == "__main__":
    main()
