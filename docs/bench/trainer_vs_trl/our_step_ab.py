"""Our GRPO train_step alone at trainer_vs_trl's V = 151,936, prompt 64 : completion 128 shape: seconds per step and
per update (step minus rollout and rewards), 3 steps after one warm-up. Run two checkouts at once, one per core, to
compare them under the same load (2026-12-06e_update_ab.txt):

    OMP_NUM_THREADS=1 taskset -c 0 env PYTHONPATH=src python docs/bench/trainer_vs_trl/our_step_ab.py new &
    (cd OLD_CHECKOUT && OMP_NUM_THREADS=1 taskset -c 1 env PYTHONPATH=src python /path/to/our_step_ab.py head)
"""
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

sys.path.insert(0, "benchmarks")
import trainer_vs_trl as tv  # noqa: E402

args = tv.parse_args(["--vocab-size", "151936", "--prompt-len", "64", "--completion-len", "128"])
torch.set_num_threads(1)
transformers.logging.set_verbosity_error()
tmp = Path(tempfile.mkdtemp())
tok = tv.save_tiny_model(args, tmp / "model")
rows = tv.make_rows(args, 64)
t = tv.build_ours(args, tmp / "model", tok, rows, tmp / "out")
res = []
for i in range(4):
    t0 = time.perf_counter()
    m = t.train_step()
    w = time.perf_counter() - t0
    if i:  # the first step is the warm-up
        res.append((w, m["time/generation_s"]))
print(sys.argv[1], "step s", [round(w, 2) for w, g in res], "update s", [round(w - g, 2) for w, g in res], flush=True)
