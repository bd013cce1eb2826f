"""RL from an icot latent init (issue #16 item 4): the bench's `run_method` for each method given, with its
`coconut_sft` init replaced by a Coconut checkpoint folder (e.g. run V's stage-2 model, 6 thoughts + the last two
steps in words) and the method's number of thoughts set to the init's (its latent_init.json `num_thoughts`); the CPU
preset's full budget (40 RL steps), seed 0, Pass@1 / Pass@4 / positions / thought-dependence on the first 500
problems of the real valid file.

    PYTHONPATH=src python docs/bench/icot_latent_init/rl_from_init.py INIT_DIR OUT_DIR coconut_grpo [key=value ...]

key=value items override the method's config (`max_steps=1 learning_rate=1e-30` scores the init itself through the
same path: an update of at most 1e-30 leaves every float32 weight as it was).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from latentrl import bench


def main() -> None:
    init, out, *rest = sys.argv[1:]
    methods = [a for a in rest if "=" not in a]
    extra = [a for a in rest if "=" in a]
    torch.set_num_threads(1)
    bench.INIT_BUILDERS["coconut_sft"] = lambda task, cache, quick: Path(init)
    task = bench.suite_tasks()["icot_mult_4x4"]
    n = json.loads(Path(init, "latent_init.json").read_text())["num_thoughts"]
    rows = []
    for m in methods:
        r = bench.run_method(m, task, Path(out), quick=False, seed=0, k=4, num_eval=500,
                             overrides=[f"latent.num_latent_steps={n}", f"latent.max_latent_steps={n}", *extra])
        rows.append({k: v for k, v in r.items() if k != "samples"} | {"overrides": extra, "samples": r["samples"][:3]})
        print(json.dumps(rows[-1]), flush=True)
    Path(out, "rl_from_init.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
